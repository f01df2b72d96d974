"""Reader behaviour beyond the fixtures: layouts seen in the wild and malformed content."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from bncheck.errors import ModelReadError
from bncheck.readers import read_model
from bncheck.readers.codecs.h5util import FileWindow
from tests.conftest import FIXTURES

NESTED = FIXTURES / "keras3/nested.keras"


def arrays_of(path: Path) -> list[tuple[str, bytes]]:
    return [
        (layer.path, np.asarray(layer.moving_variance).tobytes())
        for layer in read_model(str(path)).layers
    ]


def test_file_window_reads_exactly_its_slice(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    (tmp_path / "blob").write_bytes(data)
    with FileWindow(open(tmp_path / "blob", "rb"), start=100, size=300) as window:  # noqa: SIM115
        assert window.read(10) == data[100:110]
        window.seek(-5, io.SEEK_END)
        assert window.read() == data[395:400]
        window.seek(290)
        assert window.read(50) == data[390:400]  # never past the end of the window
        assert window.tell() == 300


def test_compressed_archive_is_read_with_a_note(tmp_path: Path) -> None:
    deflated = tmp_path / "deflated.keras"
    with (
        zipfile.ZipFile(NESTED) as source,
        zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for name in source.namelist():
            target.writestr(name, source.read(name))
    assert arrays_of(deflated) == arrays_of(NESTED)
    assert any("compressed" in note for note in read_model(str(deflated)).notes)


def test_hdf5_user_block_is_recognised(tmp_path: Path) -> None:
    source = FIXTURES / "keras3/healthy_cnn.h5"
    shifted = tmp_path / "userblock.h5"
    with h5py.File(source, "r") as src, h5py.File(shifted, "w", userblock_size=512) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name=name)
    assert shifted.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"
    assert arrays_of(shifted) == arrays_of(source)


def test_hdf5_without_keras_content_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as h5:
        h5["images"] = np.zeros((4, 4))
    with pytest.raises(ModelReadError, match="not a Keras model or weights file"):
        read_model(str(path))


def test_plain_hdf5_with_batchnorm_variable_names(tmp_path: Path) -> None:
    """A hand-written HDF5 (no Keras attributes): variables are still found by their names."""
    path = tmp_path / "tf1_export.h5"
    with h5py.File(path, "w") as h5:
        h5["net/conv1/BatchNorm/beta"] = np.zeros(3, "float32")
        h5["net/conv1/BatchNorm/moving_mean"] = np.array([0.1, 0.2, 0.3], "float32")
        h5["net/conv1/BatchNorm/moving_var"] = np.array([1.5, 0.5, 0.25], "float32")
        h5["net/conv1/weights"] = np.zeros((3, 3), "float32")
    [layer] = read_model(str(path)).layers
    assert layer.path == "net/conv1/BatchNorm"
    assert layer.gamma is None and layer.scale is False and layer.center is True
    np.testing.assert_array_equal(layer.moving_variance, [1.5, 0.5, 0.25])


def test_moving_statistics_of_different_lengths_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mismatch.h5"
    with h5py.File(path, "w") as h5:
        h5["bn/gamma:0"] = np.ones(4, "float32")
        h5["bn/moving_mean:0"] = np.zeros(4, "float32")
        h5["bn/moving_variance:0"] = np.ones(5, "float32")
    with pytest.raises(ModelReadError, match="disagree in shape"):
        read_model(str(path))


def test_moving_mean_without_variance_is_recorded_not_judged(tmp_path: Path) -> None:
    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as h5:
        h5["bn/moving_mean:0"] = np.zeros(4, "float32")
    description = read_model(str(path))
    assert description.layers == ()
    [incomplete] = description.incomplete
    assert (incomplete.path, incomplete.present, incomplete.missing) == (
        "bn",
        ("moving_mean",),
        ("moving_variance",),
    )


def test_legacy_model_missing_bn_weights_is_recorded(tmp_path: Path) -> None:
    source = FIXTURES / "keras3/healthy_cnn.h5"
    broken = tmp_path / "broken.h5"
    broken.write_bytes(source.read_bytes())
    with h5py.File(broken, "r+") as h5:
        del h5["model_weights/bn2"]
    description = read_model(str(broken))
    assert [layer.path for layer in description.layers] == ["cnn/bn1"]
    [incomplete] = description.incomplete
    assert incomplete.path == "cnn/bn2" and incomplete.present == ()
    assert incomplete.missing == ("gamma", "beta", "moving_mean", "moving_variance")


def test_archive_whose_weights_do_not_match_the_config(tmp_path: Path) -> None:
    with zipfile.ZipFile(NESTED) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["config"]["name"] = "renamed"  # the Sequential model
    config["config"]["layers"][1]["class_name"] = "Functional"  # now its group is "functional"
    members["config.json"] = json.dumps(config).encode()
    target = tmp_path / "mismatch.keras"
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelReadError, match="cannot find the weights of nested/renamed/feat_bn1"):
        read_model(str(target))


def test_batchnorm_inside_a_custom_layer_is_found_by_its_variables(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    import keras

    @keras.saving.register_keras_serializable(package="bncheck_tests")
    class ConvBlock(keras.layers.Layer):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.conv = keras.layers.Dense(3)
            self.norm = keras.layers.BatchNormalization(name="inner_bn")

        def call(self, x: object) -> object:
            return self.norm(self.conv(x))

    inputs = keras.Input((5,))
    model = keras.Model(inputs, ConvBlock(name="block")(inputs), name="custom")
    model(np.zeros((1, 5), "float32"))
    model.get_layer("block").norm.moving_variance.assign([0.5, 0.25, 2.0])
    path = tmp_path / "custom.keras"
    model.save(path)
    description = read_model(str(path))
    [layer] = description.layers
    # Named after the known enclosing layer, then the attribute holding the BN, as Keras's own
    # loader finds it (the layer's name is generated anew in each process unless given).
    assert layer.path == "custom/block/norm"
    assert layer.source == "layers/conv_block/norm/vars"
    np.testing.assert_array_equal(layer.moving_variance, [0.5, 0.25, 2.0])
    assert any("configuration does not describe" in note for note in description.notes)


def _weights_file_with(tmp_path: Path, make_variance: object) -> Path:
    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as h5:
        h5["bn/gamma:0"] = np.ones(4, "float32")
        h5["bn/moving_mean:0"] = np.zeros(4, "float32")
        make_variance(h5["bn"], "moving_variance:0")  # type: ignore[operator]
    return path


def test_links_to_other_files_are_not_followed(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["data"] = np.ones(4, "float32")
    path = _weights_file_with(
        tmp_path, lambda g, k: g.__setitem__(k, h5py.ExternalLink(str(other), "/data"))
    )
    with pytest.raises(ModelReadError, match="bn/moving_variance:0 links to another file"):
        read_model(str(path))


def test_values_stored_outside_the_file_are_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "raw.bin"
    outside.write_bytes(np.ones(4, "float32").tobytes())
    path = _weights_file_with(
        tmp_path,
        lambda g, k: g.create_dataset(k, shape=(4,), dtype="f4", external=[(str(outside), 0, 16)]),
    )
    with pytest.raises(ModelReadError, match="stores its values in another file"):
        read_model(str(path))


def test_links_inside_the_file_are_not_followed_either(tmp_path: Path) -> None:
    """A soft link names another object than its own path: what is read could not be written
    back by that path, so the file is refused."""
    path = _weights_file_with(tmp_path, lambda g, k: g.__setitem__(k, h5py.SoftLink("/shared")))
    with h5py.File(path, "r+") as h5:
        h5["shared"] = np.full(4, 2.0, "float32")
    with pytest.raises(ModelReadError, match=r"bn/moving_variance:0 is a soft link \(to /shared\)"):
        read_model(str(path))


def test_layers_a_custom_layer_creates_have_the_same_paths_in_the_file_and_the_live_model(
    tmp_path: Path,
) -> None:
    """Attributes, lists of layers and layers inside them: the reader and the live walk (the
    probe's, recalibrate's and the guard's) name each BatchNorm alike, by what holds it."""
    pytest.importorskip("keras")
    import keras

    from bncheck.layer_paths import batchnorm_layers

    @keras.saving.register_keras_serializable(package="bncheck_tests")
    class Stack(keras.layers.Layer):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.blocks = [keras.layers.BatchNormalization() for _ in range(2)]
            self.dense = keras.layers.Dense(3)
            self.norm = keras.layers.BatchNormalization(name="given_name")
            self.tail = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization()])

        def call(self, x: object) -> object:
            for block in self.blocks:
                x = block(x)
            return self.tail(self.norm(self.dense(x)))

    for _ in range(3):  # the names generated in this process are not those of a fresh one
        keras.layers.BatchNormalization()
    inputs = keras.Input((3,))
    inner = keras.Sequential([keras.layers.BatchNormalization(name="seq_bn")], name="seq")
    model = keras.Model(inputs, inner(Stack(name="stack")(inputs)), name="outer")
    path = tmp_path / "stack.keras"
    model.save(path)
    expected = [
        "outer/stack/blocks/batch_normalization",
        "outer/stack/blocks/batch_normalization_1",
        "outer/stack/norm",
        "outer/stack/tail/batch_normalization",
        "outer/seq/seq_bn",
    ]
    assert sorted(layer.path for layer in read_model(str(path)).layers) == sorted(expected)
    assert sorted(found for found, _, _ in batchnorm_layers(model)) == sorted(expected)
    loaded = keras.models.load_model(path)
    assert sorted(found for found, _, _ in batchnorm_layers(loaded)) == sorted(expected)


@pytest.mark.parametrize("saved", ["model.keras", "model.weights.h5"])
def test_bfloat16_statistics_read_as_keras_holds_them(tmp_path: Path, saved: str) -> None:
    """Keras 3 writes a bfloat16 variable as raw 16-bit words marked ``dtype="bfloat16"``;
    read as floats they are exactly the values Keras holds."""
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(dtype="bfloat16", name="bn")]
    )
    layer = model.get_layer("bn")
    layer.moving_mean.assign(np.array([0.1, -2.5, 3.3], "float32"))
    layer.moving_variance.assign(np.array([1.7, 0.01, 123.4], "float32"))
    path = tmp_path / saved
    if saved.endswith(".keras"):
        model.save(path)
    else:
        model.save_weights(path)
    with h5py.File(path if saved.endswith(".h5") else io.BytesIO(_member(path)), "r") as h5:
        assert h5["layers/batch_normalization/vars/2"].attrs["dtype"] == "bfloat16"

    def held(variable: object) -> list[float]:
        return keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32")).tolist()

    [read] = read_model(str(path)).layers
    assert read.moving_mean.dtype == np.float32
    assert read.moving_mean.tolist() == held(layer.moving_mean) == [0.10009765625, -2.5, 3.296875]
    assert read.moving_variance.tolist() == held(layer.moving_variance)
    assert read.moving_variance.tolist() != [1.7, 0.01, 123.4]  # bfloat16 rounded them


def _member(archive: Path) -> bytes:
    with zipfile.ZipFile(archive) as bundle:
        return bundle.read("model.weights.h5")
