"""New moving statistics written into SavedModels (Keras 3 ``model.export()`` and tf.keras
``model.save(DIR)``) by the bytes of their variables bundle: ``tf.train.load_checkpoint`` reads
back the new values of the written variables and, bit for bit, the old values of every other
one, and the exported model serves with them. The models are trained at test time on the
10-class digits."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bncheck.errors import ModelReadError
from bncheck.readers import read_model
from bncheck.recalibrate.write import WriteError
from bncheck.recalibrate.writers import write_statistics

pytest.importorskip("tensorflow", reason="the SavedModels are made with TensorFlow")
MODELS = ("keras3_export", "tf_keras_saved")
PREFIX = ("variables", "variables")
FINGERPRINT = "fingerprint.pb"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images[..., None] / 16.0).astype("float32"), digits.target


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras
    import tf_keras

    images, labels = _digits()
    out = tmp_path_factory.mktemp("savedmodel_writers")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(6, 3),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
            keras.layers.BatchNormalization(name="bn2"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images[:640], labels[:640], batch_size=64, epochs=1, verbose=0)
    model.export(str(out / "keras3_export"), verbose=False)
    legacy = tf_keras.Sequential(
        [
            tf_keras.layers.Conv2D(6, 3, input_shape=(8, 8, 1)),
            tf_keras.layers.BatchNormalization(name="bn1"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(10),
        ]
    )
    legacy.compile("adam", "sparse_categorical_crossentropy")
    legacy.fit(images[:640], labels[:640], batch_size=64, epochs=1, verbose=0)
    legacy.save(str(out / "tf_keras_saved"))
    return out


def _statistics(model: Path, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        layer.path: (
            rng.normal(size=layer.moving_mean.size),
            rng.uniform(0.5, 2.0, size=layer.moving_mean.size),
        )
        for layer in read_model(str(model)).layers
    }


def _checkpoint(folder: Path) -> dict[str, Any]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(folder.joinpath(*PREFIX)))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def _fingerprint(path: Path) -> Any:
    """``fingerprint.pb`` as stored at ``path``, or as TensorFlow computes it of the
    SavedModel folder ``path``."""
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    message = fingerprint_pb2.FingerprintDef()
    if path.is_dir():
        message.ParseFromString(fingerprinting.CreateFingerprintDef(str(path)))
    else:
        message.ParseFromString(path.read_bytes())
    return message


def _bytes(value: Any) -> bytes:
    return value.tobytes() if isinstance(value, np.ndarray) else bytes(value)


@pytest.mark.parametrize("name", MODELS)
def test_tensorflow_reads_the_new_statistics_and_every_other_variable_unchanged(
    saved: Path, tmp_path: Path, name: str
) -> None:
    model, out = saved / name, tmp_path / name
    statistics = _statistics(model, 1)
    layers = {layer.path: layer for layer in read_model(str(model)).layers}
    assert len(statistics) == (2 if name == "keras3_export" else 1)
    write_statistics(str(model), str(out), statistics)
    old, new = _checkpoint(model), _checkpoint(out)
    assert sorted(old) == sorted(new)
    groups = read_model(str(model)).checkpoint
    assert groups is not None
    expected = {}
    for group in groups.groups:
        if group.path in statistics:
            mean, variance = statistics[group.path]
            expected[group.keys["moving_mean"]] = mean.astype(np.float32)
            expected[group.keys["moving_variance"]] = variance.astype(np.float32)
    assert len(expected) == 2 * len(statistics)
    for key, value in old.items():
        want = expected.get(key, value)
        assert _bytes(new[key]) == _bytes(want), key
    # bncheck's own reader agrees, and every file but the bundle's is MODEL's.
    for layer in read_model(str(out)).layers:
        assert layer.moving_mean.tobytes() == statistics[layer.path][0].astype("f4").tobytes()
        assert layers[layer.path].moving_mean.tobytes() != layer.moving_mean.tobytes()
    for path in model.rglob("*"):
        if path.is_file() and not path.name.startswith("variables.") and path.name != FINGERPRINT:
            assert (out / path.relative_to(model)).read_bytes() == path.read_bytes()
    # The fingerprint is TensorFlow's own of OUT: only the checkpoint's hash changed.
    old_fingerprint, new_fingerprint = (
        _fingerprint(model / FINGERPRINT),
        _fingerprint(out / FINGERPRINT),
    )
    computed = _fingerprint(out)
    computed.uuid = new_fingerprint.uuid  # TensorFlow draws one for each computation
    assert new_fingerprint == computed
    assert new_fingerprint.checkpoint_hash != old_fingerprint.checkpoint_hash
    new_fingerprint.checkpoint_hash = old_fingerprint.checkpoint_hash
    assert new_fingerprint == old_fingerprint  # its uuid too
    # Every folder too, the empty ones (assets/) among them.
    folders = sorted(p.relative_to(model) for p in model.rglob("*") if p.is_dir())
    assert any(not any((model / folder).iterdir()) for folder in folders)
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_dir()) == folders


def test_the_exported_model_serves_with_the_new_statistics(saved: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    model, out = saved / "keras3_export", tmp_path / "served"
    statistics = _statistics(model, 2)
    write_statistics(str(model), str(out), statistics)
    loaded = tf.saved_model.load(str(out))
    values = {variable.name.split(":")[0]: variable.numpy() for variable in loaded.variables}
    for layer, (mean, variance) in statistics.items():
        name = layer.rsplit("/", 1)[-1]
        for leaf, written in (("moving_mean", mean), ("moving_variance", variance)):
            [served] = [value for key, value in values.items() if key.endswith(f"{name}/{leaf}")]
            assert served.tobytes() == written.astype("f4").tobytes()
    images, _ = _digits()
    original = tf.saved_model.load(str(model))
    before = original.serve(images[:32]).numpy()
    after = loaded.serve(images[:32]).numpy()
    assert not np.allclose(before, after, atol=1e-3)


def _refused(model: Path, out: Path, statistics: Any) -> str:
    with pytest.raises(WriteError) as raised:
        write_statistics(str(model), str(out), statistics)
    message = str(raised.value)
    assert "\n" not in message and isinstance(raised.value, ModelReadError)  # exit code 3
    return message


def test_an_existing_out_the_model_itself_and_links_are_refused(
    saved: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(saved / "keras3_export", model)
    statistics = _statistics(model, 3)
    assert "the model itself" in _refused(model, model, statistics)
    (tmp_path / "taken").mkdir()
    assert "exists" in _refused(model, tmp_path / "taken", statistics)
    (model / "assets").mkdir(exist_ok=True)
    os.symlink(tmp_path / "taken", model / "assets" / "elsewhere")
    assert "symbolic link" in _refused(model, tmp_path / "out", statistics)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "taken"]  # nothing left


def test_a_fingerprint_that_is_no_fingerprint_is_refused(saved: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(saved / "keras3_export", model)
    statistics = _statistics(model, 3)
    (model / FINGERPRINT).write_bytes(b"\xff" * 12)
    assert f"{FINGERPRINT} is not a SavedModel fingerprint" in _refused(
        model, tmp_path / "out", statistics
    )
    (model / FINGERPRINT).write_bytes(b"\x08\x01" * 40_000)
    assert "more than 65536 bytes" in _refused(model, tmp_path / "out", statistics)
    assert not (tmp_path / "out").exists()
    (model / FINGERPRINT).unlink()  # written before TensorFlow 2.12: nothing to refresh
    write_statistics(str(model), str(tmp_path / "out"), statistics)
    assert not (tmp_path / "out" / FINGERPRINT).exists()


def test_an_unknown_layer_is_refused(saved: Path, tmp_path: Path) -> None:
    message = _refused(saved / "tf_keras_saved", tmp_path / "out", {"bn9": (np.zeros(6),) * 2})
    assert "no BatchNorm layer 'bn9'" in message
    assert not (tmp_path / "out").exists()


def test_hard_links_and_sparse_files_are_refused(saved: Path, tmp_path: Path) -> None:
    """A file another path also names would carry that file's bytes into OUT; a sparse file
    would be written out in full, however little of the disk the input takes."""
    model = tmp_path / "model"
    shutil.copytree(saved / "keras3_export", model)
    statistics = _statistics(model, 3)
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    (model / "assets").mkdir(exist_ok=True)
    os.link(secret, model / "assets" / "readme.txt")
    assert "hard link" in _refused(model, tmp_path / "out", statistics)
    (model / "assets" / "readme.txt").unlink()
    with (model / "assets" / "big.bin").open("wb") as handle:
        handle.truncate(1 << 30)  # a 1 GiB hole
    assert "sparse file" in _refused(model, tmp_path / "out", statistics)
    assert not (tmp_path / "out").exists()
    (model / "assets" / "big.bin").unlink()
    write_statistics(str(model), str(tmp_path / "out"), statistics)  # the model itself is fine
    assert (tmp_path / "out" / "saved_model.pb").is_file()
