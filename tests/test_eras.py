"""Files as every Keras era wrote them (``fixtures/gen_eras*.py``): bncheck reads, without Keras,
exactly the arrays that era's loader puts into each BatchNorm layer.

tf-keras keeps the loader of Keras 2.0 to 2.2 and tf.keras 1.x (``load_weights_from_hdf5_group``:
groups by position, weights by their order, Keras 1 weights converted on the way); Keras 3 loads
its own files. Where no Keras loads a layout as a whole, the test says so and checks what a Keras
does load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from bncheck.model import ARRAY_NAMES, BNLayer, ModelDescription
from bncheck.readers import read_model
from tests.conftest import FIXTURES

ERAS = FIXTURES / "eras"

#: Full-model files tf-keras loads with its legacy HDF5 loader.
TF_KERAS_LOADS = [
    "keras205_functional.h5",
    "keras205_sequential.h5",
    "keras205_nested_frozen.h5",
    "keras216_untouched.h5",
    "keras224_nested.h5",
    "tfkeras1_functional.h5",
    "tfkeras_nested_frozen.h5",
]


def find_layer(model: Any, path: str) -> Any:
    """Follow a bncheck layer path below the outermost model."""
    current = model
    for name in path.split("/")[1:]:
        current = current.get_layer(name)
    return current


def assert_arrays(layer: BNLayer, keras_layer: Any) -> None:
    for array_name in ARRAY_NAMES:
        variable = getattr(keras_layer, array_name)
        np.testing.assert_array_equal(
            layer.array(array_name), np.asarray(variable), err_msg=f"{layer.path} {array_name}"
        )


def assert_same_as(description: ModelDescription, model: Any, count: int) -> None:
    assert len(description.layers) == count
    for layer in description.layers:
        keras_layer = find_layer(model, layer.path)
        assert_arrays(layer, keras_layer)
        assert layer.momentum == pytest.approx(keras_layer.momentum)
        assert layer.epsilon == pytest.approx(keras_layer.epsilon)
        assert layer.trainable == keras_layer.trainable
    assert not np.any(description.layers[0].moving_variance == 1.0), "statistics never trained"


@pytest.mark.parametrize("fixture", TF_KERAS_LOADS)
def test_keras2_era_files_read_as_tf_keras_loads_them(fixture: str) -> None:
    import tf_keras

    path = ERAS / fixture
    model = tf_keras.models.load_model(path, compile=False)
    description = read_model(str(path))
    batchnorms = [
        layer for layer in _flatten(model) if type(layer).__name__ == "BatchNormalization"
    ]
    if fixture != "keras216_untouched.h5":
        assert_same_as(description, model, len(batchnorms))
        return
    # Its statistics were never updated: equal, but the randomness check above does not apply.
    assert len(description.layers) == len(batchnorms)
    for layer in description.layers:
        assert_arrays(layer, find_layer(model, layer.path))


def _flatten(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found += _flatten(layer) if hasattr(layer, "layers") else [layer]
    return found


def test_uniquified_scopes_are_read_by_position() -> None:
    """Keras 2.0.5's ``batch_normalization_1_1/gamma:0`` in group ``batch_normalization_1``: the
    layout of the real files bncheck once could not read."""
    with h5py.File(ERAS / "keras205_functional.h5") as h5:
        names = h5["model_weights/batch_normalization_1"].attrs["weight_names"]
        assert names[0] == b"batch_normalization_1_1/gamma:0"
    description = read_model(str(ERAS / "keras205_functional.h5"))
    assert [layer.path for layer in description.layers] == [
        "model_1/batch_normalization_1",
        "model_1/batch_normalization_2",
    ]
    assert description.layers[0].locations["moving_variance"] == (
        "model_weights/batch_normalization_1/batch_normalization_1_1/moving_variance:0"
    )
    assert description.notes == ()  # uniquified names agree with their positions


def test_names_of_another_layer_are_a_note_not_a_swap() -> None:
    """tf.keras 1.x built twice in one graph: group ``batch_normalization`` holds variables named
    ``batch_normalization_1/...``, which is also the next BN layer's name. Reading by name would
    swap the two layers' arrays; bncheck reads by position, as Keras does, and says so."""
    import tf_keras

    path = ERAS / "tfkeras1_functional.h5"
    description = read_model(str(path))
    model = tf_keras.models.load_model(path, compile=False)
    first = description.layers[0]
    assert first.path == "model/batch_normalization"
    assert_arrays(first, model.get_layer("batch_normalization"))
    assert not np.array_equal(
        first.moving_mean, np.asarray(model.get_layer("batch_normalization_1").moving_mean)
    )
    [note] = description.notes
    assert note.startswith("model/batch_normalization: read by position")
    assert "'batch_normalization_1/gamma:0'" in note


@pytest.mark.parametrize(
    ("fixture", "frozen_order"),
    [("keras205_nested_frozen.h5", True), ("keras224_nested.h5", False)],
)
def test_nested_models_follow_the_legacy_weight_order(fixture: str, frozen_order: bool) -> None:
    """A nested model's group lists every trainable weight, then every non-trainable one; a
    frozen layer's weights all go to the second part. Positions, not names, place them."""
    description = read_model(str(ERAS / fixture))
    nested = [layer for layer in description.layers if "/model_1/" in layer.path]
    # With every layer frozen, each layer's weights stay together (conv: 2, bn: 4); otherwise
    # gamma and beta come among the trainable weights and the statistics after all of them.
    expected = (
        ["(weights 2, 3, 4, 5)", "(weights 8, 9, 10, 11)"]
        if frozen_order
        else ["(weights 2, 3, 8, 9)", "(weights 6, 7, 10, 11)"]
    )
    assert [layer.source.split(" ", 1)[1] for layer in nested] == expected


def test_keras3_reads_some_keras2_files_and_agrees_where_it_does() -> None:
    """Keras 3's legacy loader rebuilds few Keras 2 configurations (Sequential list configs, a
    nested model's node indices, tf.keras 1.x initializer dtypes and Keras 1 configs defeat it);
    where it loads a file, its arrays are bncheck's."""
    import keras

    loaded = []
    for fixture in TF_KERAS_LOADS:
        try:
            model = keras.models.load_model(ERAS / fixture, compile=False)
        except Exception:  # noqa: BLE001 - which files Keras 3 refuses is what is measured
            continue
        loaded.append(fixture)
        for layer in read_model(str(ERAS / fixture)).layers:
            assert_arrays(layer, find_layer(model, layer.path))
    assert "keras216_untouched.h5" in loaded


@pytest.mark.parametrize("fixture", ["keras3_renorm.keras", "keras3_frozen_nested.h5"])
def test_keras3_files_read_as_keras3_loads_them(fixture: str) -> None:
    import keras

    path = ERAS / fixture
    model = keras.models.load_model(path, compile=False)
    assert_same_as(read_model(str(path)), model, 2 if "renorm" in fixture else 3)


def test_renorm_layers_keep_their_extra_variables_apart() -> None:
    import keras

    path = ERAS / "keras3_renorm.keras"
    model = keras.models.load_model(path, compile=False)
    for layer in read_model(str(path)).layers:
        keras_layer = find_layer(model, layer.path)
        assert keras_layer.renorm and layer.momentum == 0.9
        # moving_variance is kept as the square of moving_stddev, less epsilon.
        stddev = np.asarray(keras_layer.moving_stddev)
        np.testing.assert_allclose(layer.moving_variance, stddev**2 - layer.epsilon, rtol=1e-5)


def test_sharded_weights_read_as_keras3_loads_them() -> None:
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9, name="bn1")(x))
    x = layers.Conv2D(16, 3, padding="same")(x)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9, name="bn2")(x))
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(x), name="sharded")
    index = ERAS / "keras3_sharded.weights.json"
    model.load_weights(index)
    description = read_model(str(index))
    assert [layer.path for layer in description.layers] == ["sharded/bn1", "sharded/bn2"]
    for layer in description.layers:
        assert_arrays(layer, model.get_layer(layer.name))
    # bn2's variables straddle two shards; the source says which.
    assert description.layers[1].source.startswith(
        "keras3_sharded_00001.weights.h5, keras3_sharded_00002.weights.h5: "
    )


def keras1_equivalent(tf_keras: Any, head_bn: bool) -> Any:
    """The Keras 2 model Keras 2's ``load_weights`` takes a Keras 1 file's weights into."""
    from tf_keras import layers

    stack = [
        layers.Conv2D(8, 3, padding="same", input_shape=(8, 8, 1)),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.Conv2D(16, 3, padding="same"),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.GlobalAveragePooling2D(),
        *([layers.BatchNormalization()] if head_bn else []),
        layers.Dense(10, activation="softmax"),
    ]
    return tf_keras.Sequential(stack)


@pytest.mark.parametrize("fixture", ["keras1_sequential.h5", "keras1_weights.h5"])
def test_keras1_files_read_as_keras2_loads_their_weights(fixture: str) -> None:
    """No Keras since 2.0 rebuilds a Keras 1 configuration (``mode``, ``nb_filter``, ...), but
    Keras 2's ``load_weights`` still takes a Keras 1 file's weights into an equivalent model,
    running_std into moving_variance unchanged; bncheck reads the same arrays."""
    import tf_keras

    path = ERAS / fixture
    with pytest.raises(Exception, match="convolution2d_1|No model config"):
        tf_keras.models.load_model(path, compile=False)
    head_bn = fixture == "keras1_sequential.h5"
    model = keras1_equivalent(tf_keras, head_bn)
    model.load_weights(path)
    loaded = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    description = read_model(str(path))
    # A mode=2 layer (the head's) normalises with batch statistics: it is left out, with a note.
    assert len(description.layers) == 2
    for layer, keras_layer in zip(description.layers, loaded[:2], strict=True):
        assert_arrays(layer, keras_layer)
    if head_bn:
        assert any(
            "mode=2" in note and "batchnormalization_3" in note for note in description.notes
        )
        np.testing.assert_array_equal(np.asarray(loaded[2].moving_variance), np.ones(16))
    assert any("running_std is read as" in note for note in description.notes)


def test_missing_variance_is_a_finding_where_keras_refuses_the_file() -> None:
    import tf_keras

    path = ERAS / "keras205_missing_variance_weights.h5"
    model = keras1_equivalent(tf_keras, head_bn=False)
    with pytest.raises(ValueError, match="(?i)weight count mismatch"):
        model.load_weights(path)
    description = read_model(str(path))
    [incomplete] = description.incomplete
    assert incomplete.path == "batch_normalization_2"
    assert incomplete.present == ("gamma", "beta", "moving_mean")
    assert incomplete.missing == ("moving_variance",)
    # The complete layer holds the arrays Keras loads from the intact file of the same model.
    intact = tf_keras.models.load_model(ERAS / "keras205_functional.h5", compile=False)
    [complete] = description.layers
    assert_arrays(complete, intact.get_layer("batch_normalization_1"))


def test_a_shard_given_alone_reads_the_whole_set(tmp_path: Path) -> None:
    shard = ERAS / "keras3_sharded_00001.weights.h5"
    alone = read_model(str(shard))
    whole = read_model(str(ERAS / "keras3_sharded.weights.json"))
    assert alone.path == str(shard)
    assert [layer.path for layer in alone.layers] == [layer.path for layer in whole.layers]
    assert "keras3_sharded_00001.weights.h5 is one; all of them were read" in alone.notes[-1]
