"""Reading files laid out the way each Keras wrote them, and what the readers make of damage."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from bncheck.engine import inspect_path
from bncheck.errors import ModelReadError
from bncheck.model import ModelDescription
from bncheck.readers import detect, read_model
from bncheck.settings import Settings
from tests.conftest import FIXTURES, CliResult

ERAS = FIXTURES / "eras"
Run = Callable[..., CliResult]


def copy(tmp_path: Path, fixture: str) -> Path:
    target = tmp_path / Path(fixture).name
    shutil.copy(FIXTURES / fixture, target)
    return target


def statistics(description: ModelDescription) -> list[tuple[str, bytes, bytes]]:
    return [
        (layer.path, layer.moving_mean.tobytes(), layer.moving_variance.tobytes())
        for layer in description.layers
    ]


def edit_config(path: Path, edit: Callable[[dict], None]) -> None:
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        edit(config)
        h5.attrs["model_config"] = np.bytes_(json.dumps(config).encode())


def test_chunked_weight_names_read_like_whole_lists(tmp_path: Path) -> None:
    """Keras 2.1.5 and later split a list over 64 KiB into ``weight_names0``, ``1``, ..."""
    path = copy(tmp_path, "eras/keras205_functional.h5")
    with h5py.File(path, "r+") as h5:
        group = h5["model_weights/batch_normalization_2"]
        names = group.attrs["weight_names"]
        del group.attrs["weight_names"]
        group.attrs["weight_names0"], group.attrs["weight_names1"] = names[:3], names[3:]
    assert statistics(read_model(str(path))) == statistics(
        read_model(str(ERAS / "keras205_functional.h5"))
    )


def test_groups_listed_in_another_order_than_the_configuration_are_noted(
    tmp_path: Path,
) -> None:
    """Keras pairs the n-th group holding weights with the n-th layer holding weights."""
    path = copy(tmp_path, "eras/keras205_functional.h5")
    with h5py.File(path, "r+") as h5:
        h5["model_weights"].attrs["layer_names"] = h5["model_weights"].attrs["layer_names"][::-1]
    notes = read_model(str(path)).notes
    assert notes == (
        "model_weights lists its layer groups in another order than the configuration; "
        "Keras pairs them by position, bncheck by group name",
    )


def test_a_group_holding_more_weights_than_configured_is_read_by_name(tmp_path: Path) -> None:
    path = copy(tmp_path, "eras/keras224_nested.h5")
    with h5py.File(path, "r+") as h5:
        group = h5["model_weights/model_1"]
        group["extra/counter:0"] = np.zeros(1, "float32")
        group.attrs["weight_names"] = np.append(group.attrs["weight_names"], b"extra/counter:0")
    description = read_model(str(path))
    assert statistics(description) == statistics(read_model(str(ERAS / "keras224_nested.h5")))
    assert description.notes == (
        "model_1: BatchNorm arrays found by their names in model_weights/model_1: it holds 13 "
        "weights where the configuration implies 12, so Keras's loader would refuse it",
    )


def test_a_layer_of_an_unknown_class_with_weights_makes_names_decide(tmp_path: Path) -> None:
    path = copy(tmp_path, "eras/keras224_nested.h5")

    def rename_conv(config: dict) -> None:
        config["config"]["layers"][0]["config"]["layers"][1]["class_name"] = "MyConv"

    edit_config(path, rename_conv)
    description = read_model(str(path))
    assert statistics(description) == statistics(read_model(str(ERAS / "keras224_nested.h5")))
    assert "a layer of a class bncheck does not know holds variables" in description.notes[0]


@pytest.mark.parametrize(("mode", "kind"), [(1, "each sample"), (2, "each batch")])
def test_keras1_batch_statistics_modes_are_not_judged(tmp_path: Path, mode: int, kind: str) -> None:
    path = copy(tmp_path, "eras/keras1_sequential.h5")

    def set_mode(config: dict) -> None:
        config["config"][1]["config"]["mode"] = mode

    edit_config(path, set_mode)
    description = read_model(str(path))
    assert [layer.name for layer in description.layers] == ["batchnormalization_2"]
    assert any(
        note.startswith(f"model/batchnormalization_1: Keras 1 BatchNormalization mode={mode}")
        and kind in note
        for note in description.notes
    )


def test_a_keras3_archive_missing_one_variable_is_a_finding(run_cli: Run, tmp_path: Path) -> None:
    source = FIXTURES / "keras3/healthy_cnn.keras"
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(zipfile.ZipFile(source).read("model.weights.h5"))
    with h5py.File(weights, "r+") as h5:
        del h5["layers/batch_normalization_1/vars/3"]
    target = tmp_path / "broken.keras"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as archive:
        for name in original.namelist():
            data = weights.read_bytes() if name == "model.weights.h5" else original.read(name)
            archive.writestr(name, data)
    result = run_cli("inspect", target, "--format", "json")
    assert result.code == 1
    [model] = result.json()["models"]
    assert [f["rule"] for f in model["findings"]] == ["BN018"]
    assert model["findings"][0]["layer"] == "cnn/bn2"
    assert model["findings"][0]["details"]["missing"] == ["moving_variance"]
    assert len(model["layers"]) == 1


def test_a_keras_archive_in_npz_weights_is_refused_without_unpickling(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    import keras
    from keras.src.saving import saving_lib

    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    path = tmp_path / "npz.keras"
    saving_lib.save_model(model, str(path), weights_format="npz")
    with pytest.raises(ModelReadError, match=r"model\.weights\.npz \(weights_format='npz'\)"):
        read_model(str(path))


def keras3_block(negative_variance: bool, attribute: str) -> object:
    """A Keras 3 model whose BatchNorm-like layer sits inside a custom layer under
    ``attribute``: a real BatchNorm, or four per-channel vectors of another kind."""
    pytest.importorskip("keras")
    import keras

    @keras.saving.register_keras_serializable(package="bncheck_eras_tests")
    class FourVectors(keras.layers.Layer):
        def build(self, input_shape: tuple[int, ...]) -> None:
            self.vectors = [self.add_weight(shape=(input_shape[-1],)) for _ in range(4)]

        def call(self, x: object) -> object:
            return x

    @keras.saving.register_keras_serializable(package="bncheck_eras_tests")
    class Block(keras.layers.Layer):
        def __init__(self, inner: str = "bn", **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.inner = inner
            layer = (
                keras.layers.BatchNormalization(name="inner") if inner == "bn" else FourVectors()
            )
            setattr(self, attribute, layer)

        def call(self, x: object) -> object:
            return getattr(self, attribute)(x)

        def get_config(self) -> dict:
            return {**super().get_config(), "inner": self.inner}

    inputs = keras.Input((3,))
    block = Block(inner="bn" if attribute != "coeffs" else "vectors", name="block")
    model = keras.Model(inputs, block(inputs), name="custom")
    model(np.zeros((1, 3), "float32"))
    inner = getattr(block, attribute)
    last = inner.moving_variance if attribute != "coeffs" else inner.vectors[3]
    last.assign([0.5, -0.25 if negative_variance else 0.25, 2.0])
    return model


@pytest.mark.parametrize("attribute", ["norm", "bn1"])
def test_a_batchnorm_inside_a_custom_layer_with_negative_variance_is_judged(
    tmp_path: Path, attribute: str
) -> None:
    model = keras3_block(negative_variance=True, attribute=attribute)
    path = tmp_path / "custom.keras"
    model.save(path)  # type: ignore[attr-defined]
    result = inspect_path(str(path), Settings())
    assert [(f.rule, f.layer) for f in result.findings] == [("BN004", f"custom/block/{attribute}")]


def test_four_vectors_of_another_kind_are_not_taken_for_batchnorm(tmp_path: Path) -> None:
    """Without a BatchNorm name, only a non-negative fourth vector reads as a variance."""
    model = keras3_block(negative_variance=True, attribute="coeffs")
    path = tmp_path / "custom.keras"
    model.save(path)  # type: ignore[attr-defined]
    description = read_model(str(path))
    assert description.layers == ()


def test_sharded_weights_with_a_missing_shard_are_unreadable(run_cli: Run, tmp_path: Path) -> None:
    for path in ERAS.glob("keras3_sharded*"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "keras3_sharded_00002.weights.h5").unlink()
    index = tmp_path / "keras3_sharded.weights.json"
    result = run_cli("inspect", index)
    assert result.code == 3
    assert result.err == (
        f"bncheck: error: {index}: the index names 1 shard(s) that are missing: "
        "keras3_sharded_00002.weights.h5\n"
    )
    assert result.out == ""


def test_a_shard_index_cannot_name_files_elsewhere(tmp_path: Path) -> None:
    index = tmp_path / "m.weights.json"
    index.write_text(json.dumps({"weight_map": {"/layers/bn/vars": "../elsewhere.weights.h5"}}))
    with pytest.raises(ModelReadError, match="names a shard '../elsewhere.weights.h5' outside"):
        read_model(str(index))


def test_a_folder_of_sharded_weights_is_one_model(tmp_path: Path) -> None:
    for path in ERAS.glob("keras3_sharded*"):
        shutil.copy(path, tmp_path / path.name)
    assert detect.find_models(str(tmp_path)) == [str(tmp_path / "keras3_sharded.weights.json")]


def test_json_that_is_no_shard_index_is_not_a_model(tmp_path: Path) -> None:
    notes = tmp_path / "config.json"
    notes.write_text('{"layers": []}')
    with pytest.raises(ModelReadError, match="not a model file bncheck can read"):
        read_model(str(notes))
    assert detect.find_models(str(tmp_path)) == []
