"""Seed 004's custom training loop, guarded.

MobileNetV2 trained from scratch (``weights=None``) with a ``tf.function`` step that calls
``model(image)`` without ``training=True``: the weights train, the moving statistics never do.
The guard stops the run at step 100. The data are scikit-learn's 10-class digits, upscaled to
32x32x3 (MobileNetV2's smallest input).

    python docs/examples/seed004_guard.py
"""

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

import bncheck

digits = load_digits()
pixels = np.kron(digits.images / 16.0, np.ones((4, 4)))[..., None].repeat(3, axis=-1)
train_batches = (
    tf.data.Dataset.from_tensor_slices((pixels.astype("float32"), digits.target))
    .shuffle(len(pixels), seed=0)
    .repeat()
    .batch(32)
)

base_model = tf.keras.applications.MobileNetV2(
    input_shape=(32, 32, 3), include_top=False, weights=None
)
model = tf.keras.Sequential(
    [base_model, tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(10)]
)
optimizer = tf.keras.optimizers.RMSprop(1e-3)
loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@tf.function
def train_cls_step(image, label):
    with tf.GradientTape() as tape:
        predictions = model(image)  # the seed's bug: no training=True
        loss = loss_object(label, predictions)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))


guard = bncheck.keras.watch(model, on_problem="raise")
for images, labels in train_batches.take(300):
    train_cls_step(images, labels)
    guard.step()
