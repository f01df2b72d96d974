"""`bncheck recalibrate` repairs stale statistics and changes nothing else, in-process."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from bncheck.readers import read_model
from tests.conftest import FIXTURES, CliResult, user_module
from tests.h5_tools import datasets

Run = Callable[..., CliResult]
PROBE = FIXTURES / "probe"
DIGITS = FIXTURES / "data/digits_0_1.npy"
LABELS = FIXTURES / "data/digits_0_1_labels.npy"


def accuracies(path: Path) -> tuple[float, float]:
    """(inference-mode, training-mode) accuracy of a model on the whole digits data."""
    model = keras.models.load_model(path, compile=False)
    x, y = np.load(DIGITS), np.load(LABELS)
    inference = np.concatenate([model(x[i : i + 32]).numpy() for i in range(0, len(x), 32)])
    training = np.concatenate(
        [model(x[i : i + 32], training=True).numpy() for i in range(0, len(x), 32)]
    )
    return float(np.mean(inference.argmax(1) == y)), float(np.mean(training.argmax(1) == y))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recalibration_closes_the_gap_between_modes(run_cli: Run, tmp_path: Path) -> None:
    model = PROBE / "stale_stats.keras"
    before_inference, before_training = accuracies(model)
    assert before_training - before_inference > 0.2
    out = tmp_path / "fixed.keras"
    result = run_cli("recalibrate", model, "--data", DIGITS, "--labels", LABELS, "-o", out)
    assert result.code == 0, result.err
    after_inference, after_training = accuracies(out)
    assert abs(after_training - after_inference) <= 0.03
    assert after_inference > before_inference + 0.2
    lines = result.out.splitlines()
    assert lines[0] == f"re-estimated {model}: 360 samples in 12 batches of {DIGITS}"
    assert any(line.startswith("cnn/bn1  recalibrated") for line in lines)
    # The verification is measured on every sample, the short last batch included.
    verified = (
        f"verified on {DIGITS} (calibration data, 360 samples): accuracy "
        f"{before_inference:.1%} with the stored statistics, {after_inference:.1%} with the new "
        "ones ("
    )
    [line] = [line for line in lines if line.startswith(verified)]
    assert re.search(r"ones \(\+\d+\.\d points, 95% interval \+[\d.]+ to \+[\d.]+\)$", line)
    assert f"wrote {out}" in lines
    # The written model's own report comes from the engine, like `inspect --data`.
    assert f"{out} (keras): 3 BatchNorm layers" in lines
    assert lines[-1].startswith("OK: 0 errors")


@pytest.mark.parametrize(
    ("fixture", "recalibrated"),
    [
        ("stale_stats.keras", 3),  # optimizer state in model.weights.h5
        ("stale_stats.h5", 3),  # Keras 3 legacy .h5 with optimizer_weights
        ("keras2_stale.h5", 2),  # written by tf-keras
    ],
)
def test_only_the_moving_statistics_change(
    run_cli: Run, tmp_path: Path, fixture: str, recalibrated: int
) -> None:
    model = tmp_path / fixture
    model.write_bytes((PROBE / fixture).read_bytes())
    original = digest(model)
    out = tmp_path / f"fixed{model.suffix}"
    assert run_cli("recalibrate", model, "--data", DIGITS, "--force", "-o", out).code == 0
    assert digest(model) == original

    layers = read_model(str(model)).layers
    moved = {
        layer.locations[role] for layer in layers for role in ("moving_mean", "moving_variance")
    }
    assert len(moved) == 2 * recalibrated
    old, new = datasets(model), datasets(out)
    assert old.keys() == new.keys()
    assert any("optimizer" in name for name in old)
    for name in old:
        if name in moved:
            assert old[name] != new[name], name
        else:
            assert old[name] == new[name], name
    if fixture.endswith(".keras"):
        with zipfile.ZipFile(model) as before, zipfile.ZipFile(out) as after:
            assert before.namelist() == after.namelist()
            for info in before.infolist():
                assert after.getinfo(info.filename).compress_type == info.compress_type
                if info.filename != "model.weights.h5":
                    assert before.read(info) == after.read(info.filename)
    else:
        with h5py.File(model, "r") as before, h5py.File(out, "r") as after:
            assert dict(before.attrs) == dict(after.attrs)
    keras.models.load_model(out, compile=False)


def test_frozen_layers_keep_their_statistics(run_cli: Run, tmp_path: Path) -> None:
    model = PROBE / "stale_frozen_bn1.keras"
    out = tmp_path / "fixed.keras"
    result = run_cli("recalibrate", model, "--data", DIGITS, "--labels", LABELS, "-o", out)
    assert "cnn/bn1  kept (frozen)" in result.out
    old = {layer.path: layer for layer in read_model(str(model)).layers}
    new = {layer.path: layer for layer in read_model(str(out)).layers}
    assert np.array_equal(old["cnn/bn1"].moving_mean, new["cnn/bn1"].moving_mean)
    assert np.array_equal(old["cnn/bn1"].moving_variance, new["cnn/bn1"].moving_variance)
    assert not np.array_equal(old["cnn/bn2"].moving_mean, new["cnn/bn2"].moving_mean)

    everything = tmp_path / "all.keras"
    run_cli("recalibrate", model, "--data", DIGITS, "-o", everything, "--include-frozen", "--force")
    included = {layer.path: layer for layer in read_model(str(everything)).layers}
    assert not np.array_equal(old["cnn/bn1"].moving_mean, included["cnn/bn1"].moving_mean)
    assert included["cnn/bn1"].trainable is False  # the configuration is untouched


def test_agrees_with_an_independent_precise_batchnorm(run_cli: Run, tmp_path: Path) -> None:
    """The fixture generator recomputed the same model's statistics its own way (unshuffled
    batches of 32, biased variances, here corrected for its n values per channel: 32 x 8 x 8 for
    the conv layers, 32 for the Dense one); bncheck's shuffled batches of 40 change each batch's
    composition, so upstream normalisation differs slightly (most for the Dense layer, whose few
    samples per batch make noisy variances), but the statistics must agree closely."""
    out = tmp_path / "fixed.keras"
    # Batches of 40 use all 360 samples.
    run_cli(
        "recalibrate", PROBE / "stale_stats.keras", "--data", DIGITS, "--batch-size", "40",
        "--force", "-o", out,
    )  # fmt: skip
    ours = {layer.path: layer for layer in read_model(str(out)).layers}
    theirs = {layer.path: layer for layer in read_model(str(PROBE / "recalibrated.keras")).layers}
    values = {"cnn/bn1": 32 * 64, "cnn/bn2": 32 * 64, "cnn/bn3": 32}
    for path, layer in theirs.items():
        spread = np.sqrt(layer.moving_variance)
        shift = np.abs(ours[path].moving_mean - layer.moving_mean) / spread
        unbiased = layer.moving_variance * values[path] / (values[path] - 1)
        ratio = ours[path].moving_variance / unbiased
        assert shift.max() < 0.05, path
        assert np.abs(np.log(ratio)).max() < 0.2, path
        assert abs(np.log(ratio).mean()) < 0.03, path
    # bn1 sees the raw images, whatever the batching: its mean is exact.
    np.testing.assert_allclose(
        ours["cnn/bn1"].moving_mean, theirs["cnn/bn1"].moving_mean, rtol=1e-4, atol=1e-6
    )


def test_refuses_to_overwrite_the_model_unless_in_place(run_cli: Run, tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes((PROBE / "stale_stats.keras").read_bytes())
    original = digest(model)
    for args in (["-o", model], []):
        result = run_cli("recalibrate", model, "--data", DIGITS, *args)
        assert result.code == 2
        assert len(result.err.strip().splitlines()) == 1
        assert "--in-place" in result.err
    assert digest(model) == original
    result = run_cli("recalibrate", model, "--data", DIGITS, "--labels", LABELS, "--in-place")
    assert result.code == 0
    assert digest(model) != original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_a_failed_write_leaves_nothing_behind(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    out = tmp_path / "fixed.keras"
    result = run_cli(
        "recalibrate", PROBE / "stale_stats.keras", "--data", DIGITS, "--force", "-o", out
    )
    assert result.code == 3
    model = PROBE / "stale_stats.keras"
    assert result.err == (f"bncheck: error: {model}: cannot write {out}: No space left on device\n")
    assert list(tmp_path.iterdir()) == []


def write_images(folder: Path, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """PNG files in one subfolder per class; returns the pixel values a decoder gets back,
    scaled."""
    import tensorflow as tf

    pixels = np.round(images * 255).astype("uint8")
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        target = folder / f"class_{label}" / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tf.io.encode_png(image).numpy())
    return pixels.astype("float32") / 255


def test_image_folder_is_streamed_like_an_array(run_cli: Run, tmp_path: Path) -> None:
    rows = np.random.default_rng(0).choice(len(np.load(DIGITS)), 24, replace=False)
    labels = np.load(LABELS)[rows]
    decoded = write_images(tmp_path / "images", np.load(DIGITS)[rows], labels)
    np.save(tmp_path / "same.npy", decoded)
    np.save(tmp_path / "labels.npy", labels)
    from_images, from_array = tmp_path / "images.keras", tmp_path / "array.keras"
    common = ["--batch-size", "32", "--seed", "3"]
    result = run_cli(
        "recalibrate", PROBE / "stale_stats.keras", "--data", tmp_path / "images",
        "--image-size", "8", "8", "--rescale", "1/255", "-o", from_images, *common,
    )  # fmt: skip
    assert result.code == 0, result.err + result.out
    assert "24 samples in 1 batch of" in result.out
    # The class subfolders are the labels: the verification measured accuracy.
    assert "(calibration data, 24 samples): accuracy" in result.out
    run_cli("recalibrate", PROBE / "stale_stats.keras", "--data", tmp_path / "same.npy",
            "--labels", tmp_path / "labels.npy", "-o", from_array, *common)  # fmt: skip
    # One batch holds every image, so the order cannot matter: the same statistics.
    for image_layer, array_layer in zip(
        read_model(str(from_images)).layers, read_model(str(from_array)).layers, strict=True
    ):
        np.testing.assert_allclose(image_layer.moving_mean, array_layer.moving_mean, atol=1e-5)
        np.testing.assert_allclose(
            image_layer.moving_variance, array_layer.moving_variance, rtol=1e-4
        )


def test_samples_limit_the_data(run_cli: Run, tmp_path: Path) -> None:
    result = run_cli(
        "recalibrate", PROBE / "stale_stats.keras", "--data", DIGITS, "--labels", LABELS,
        "-o", tmp_path / "fixed.keras", "--samples", "40", "--batch-size", "16",
    )  # fmt: skip
    assert result.code == 0
    assert ": 40 samples in 3 batches of" in result.out.splitlines()[0]


@pytest.mark.parametrize(
    ("model", "args", "code", "message"),
    [
        ("probe/stale_stats.keras", ["--data", "missing.npy", "-o", "{tmp}/o.keras"], 2,
         "--data missing.npy: no such file"),
        ("probe/stale_stats.keras", ["--data", "{tmp}", "-o", "{tmp}/o.keras"], 2,
         "is a folder: pass --image-size H W"),
        ("probe/stale_stats.keras", ["--data", str(DIGITS), "--image-size", "8", "8", "-o",
         "{tmp}/o.keras"], 2, "--image-size and --rescale apply to image folders only"),
        ("probe/stale_stats.keras", ["--data", str(DIGITS), "-o", "{tmp}/no/such/o.keras"], 2,
         "cannot write {tmp}/no/such/o.keras: no such directory"),
        ("probe/stale_stats.keras", ["--data", str(DIGITS), "--rescale", "x", "-o", "o"], 2,
         "'x' is not a number or a fraction like 1/255"),
        ("probe/lambda_layer.keras", ["--data", str(DIGITS), "-o", "{tmp}/o.keras"], 2,
         "pass --unsafe to run it if you trust the file"),
        ("probe/tf_keras_savedmodel", ["--data", str(DIGITS), "-o", "{tmp}"], 2,
         "exists: a SavedModel is written to a new folder OUT, never over one"),
        ("probe/tf_keras_savedmodel",
         ["--data", str(DIGITS), "-o", str(PROBE / "tf_keras_savedmodel" / "assets" / "new")], 2,
         "write the new SavedModel outside the one it is made from"),
        ("weights/healthy_cnn.weights.h5", ["--data", str(DIGITS), "-o", "{tmp}/o.h5"], 2,
         "pass --architecture MODEL"),
        ("probe/missing.keras", ["--data", str(DIGITS), "-o", "{tmp}/o.keras"], 3,
         "no such file or directory"),
        ("pytorch/healthy_torchscript.pt", ["--data", str(DIGITS), "-o", "{tmp}/o.pt"], 2,
         "holds compiled code; pass --unsafe to run it if you trust the file and it was scripted"
         " (torch.jit.script): a traced archive (torch.jit.trace) cannot be measured"),
    ],
)  # fmt: skip
def test_errors_are_one_line(
    run_cli: Run, tmp_path: Path, model: str, args: list[str], code: int, message: str
) -> None:
    filled = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = run_cli("recalibrate", FIXTURES / model, *filled)
    assert result.code == code, result.err
    [line] = result.err.strip().splitlines()
    assert line.startswith("bncheck: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in line
    assert sorted(tmp_path.iterdir()) == []


CUSTOM_BLOCK = """
import keras


@keras.saving.register_keras_serializable(package="tests_recalibrate")
class ConvBlock(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, padding="same")
        self.bn = keras.layers.BatchNormalization()

    def call(self, x, training=None):
        return self.bn(self.conv(x), training=training)
"""


def test_a_batchnorm_a_custom_layer_creates_is_the_same_layer_in_file_and_loaded_model(
    run_cli: Run, tmp_path: Path
) -> None:
    """The BN's generated name differs between the process that saved the model (which built
    other BN layers first) and the one that loads it: the report, the probe and the repair all
    know the layer by the attribute holding it, as Keras's loader does."""
    source = tmp_path / "blocks.py"
    module = user_module(source, CUSTOM_BLOCK)
    for _ in range(3):  # a notebook that built other models first
        keras.layers.BatchNormalization()
    inputs = keras.Input((8, 8, 1))
    block = module.ConvBlock(name="block")
    x = keras.layers.GlobalAveragePooling2D()(block(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(x), name="custom")
    block.bn.moving_mean.assign(np.full(4, 3.0, "float32"))  # stale: far from the data's mean
    path, output = tmp_path / "custom.keras", tmp_path / "repaired.keras"
    model.save(path)
    assert block.bn.name != "batch_normalization"  # the name saved in the file is generated

    report = run_cli(
        "inspect", path, "--data", DIGITS, "--custom-objects", source, "--format", "json"
    )
    [described] = report.json()["models"]
    assert [layer["path"] for layer in described["layers"]] == ["custom/block/bn"]
    assert [layer["path"] for layer in described["probe"]["layers"]] == ["custom/block/bn"]
    assert any(
        f["rule"] == "BN014" and f["layer"] == "custom/block/bn" for f in described["findings"]
    )

    repaired = run_cli(
        "recalibrate", path, "--data", DIGITS, "-o", output, "--custom-objects", source, "--force"
    )
    assert repaired.code in (0, 1), repaired.err
    assert re.search(r"custom/block/bn\s+recalibrated", repaired.out), repaired.out
    [layer] = read_model(str(output)).layers
    assert np.all(np.abs(layer.moving_mean) < 1.0)  # re-estimated from the data, no longer 3


MOMENTUM_BLOCK = """
import keras


@keras.saving.register_keras_serializable(package="tests_recalibrate_momentum")
class Block(keras.layers.Layer):
    def __init__(self, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.dense = keras.layers.Dense(4)
        self.bn = keras.layers.BatchNormalization(momentum=momentum)

    def call(self, x, training=None):
        return self.bn(self.dense(x), training=training)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}
"""


def test_the_loaded_model_gives_the_settings_no_configuration_records(
    run_cli: Run, tmp_path: Path
) -> None:
    """A BatchNorm a custom layer creates is in no configuration: its momentum (1.0, statistics
    that never update) comes from the loaded model, so the finding names that cause (BN008, not
    a loop without training=True) and recalibrate re-estimates it."""
    source = tmp_path / "momentum_block.py"
    module = user_module(source, MOMENTUM_BLOCK)
    inputs = keras.Input((8, 8, 1))
    block = module.Block(momentum=1.0, name="block")
    x = block(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(x), name="held")
    block.bn.gamma.assign(np.full(4, 1.5, "float32"))  # trained; the statistics never moved
    path, output = tmp_path / "held.keras", tmp_path / "repaired.keras"
    model.save(path)

    static = run_cli("inspect", path, "--format", "json").json()["models"][0]
    assert static["layers"][0]["momentum"] is None
    assert [f["rule"] for f in static["findings"]] == ["BN001"]
    probed = run_cli(
        "inspect", path, "--data", DIGITS, "--custom-objects", source, "--format", "json"
    ).json()["models"][0]
    assert probed["layers"][0]["momentum"] == 1.0
    rules = {f["rule"] for f in probed["findings"]}
    assert "BN008" in rules and "BN001" not in rules
    assert any("come from the loaded model" in note for note in probed["notes"])

    repaired = run_cli(
        "recalibrate", path, "--data", DIGITS, "-o", output, "--custom-objects", source, "--force"
    )
    assert re.search(r"held/block/bn\s+recalibrated", repaired.out), repaired.out


def test_stopped_after_writing_the_output_says_it_was_written(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal while the written model is being inspected: OUT is whole, and the one line
    says so, instead of leaving the user to think nothing was written."""
    from bncheck import interrupts
    from bncheck.recalibrate import command

    def stopped(*args: object, **kwargs: object) -> None:
        raise interrupts.Terminated

    monkeypatch.setattr(command, "inspect_path", stopped)
    out = tmp_path / "out.keras"
    model = PROBE / "stale_stats.keras"
    result = run_cli("recalibrate", model, "--data", DIGITS, "--force", "-o", out)
    assert (result.code, result.err) == (143, f"bncheck: terminated after writing {out}\n")
    assert result.out == ""
    assert read_model(str(out)).layers  # whole: it reads
