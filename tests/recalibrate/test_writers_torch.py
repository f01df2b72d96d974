"""New running statistics written into the files PyTorch makes (an ONNX export, a state dict,
a pickled module, a TorchScript archive, a safetensors file) by their bytes: each file, loaded
back by its own framework, holds the new statistics bit for bit and every other tensor as it
was; and what cannot be written so is refused in one line. The network is trained at test
time on the 10-class digits."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bncheck.errors import ModelReadError
from bncheck.readers import read_model
from bncheck.recalibrate.write import WriteError
from bncheck.recalibrate.writers import write_statistics

torch = pytest.importorskip("torch", reason="the test network is made with the torch extra")
pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
nn = torch.nn

FILES = ("exported.onnx", "state_dict.pt", "module.pt", "scripted.pt", "weights.safetensors")
LAYERS = ("1", "5")


def _network() -> Any:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(216, 10),
        nn.BatchNorm1d(10),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = _network()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for rows in torch.randperm(len(images)).split(64)[:10]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(images[rows]), labels[rows]).backward()
        optimizer.step()
    net.eval()
    out = tmp_path_factory.mktemp("torch_writers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its retirement
        torch.onnx.export(
            net,
            (images[:2],),
            str(out / "exported.onnx"),
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=["image"],
            dynamic_axes={"image": {0: "batch"}},
        )
    torch.save(net.state_dict(), out / "state_dict.pt")
    torch.save(net, out / "module.pt")
    torch.jit.save(torch.jit.script(net), str(out / "scripted.pt"))
    save_file(net.state_dict(), str(out / "weights.safetensors"))
    np.save(out / "images.npy", images[:64].numpy())
    return out


def _new_statistics(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        layer: (rng.normal(size=channels), rng.uniform(0.5, 2.0, size=channels))
        for layer, channels in zip(LAYERS, (6, 10), strict=True)
    }


def _state(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the file, as its own framework loads it."""
    name = path.name
    if name.endswith(".onnx"):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), "np") as tensors:
            return {key: tensors.get_tensor(key) for key in tensors.keys()}  # noqa: SIM118
    if name == "scripted.pt":
        state = torch.jit.load(str(path)).state_dict()
    elif name == "module.pt":
        state = torch.load(path, weights_only=False).state_dict()  # made by this test
    else:
        state = torch.load(path, weights_only=True)
    return {key: value.numpy() for key, value in state.items()}


@pytest.mark.parametrize("name", FILES)
def test_the_framework_reads_the_new_statistics_and_every_other_tensor_unchanged(
    saved: Path, tmp_path: Path, name: str
) -> None:
    model = saved / name
    out = tmp_path / name
    statistics = _new_statistics(1)
    before = model.read_bytes()
    write_statistics(str(model), str(out), statistics)
    assert model.read_bytes() == before
    old, new = _state(model), _state(out)
    assert sorted(old) == sorted(new)
    expected = {
        f"{layer}.{leaf}": values.astype(np.float32)
        for layer, pair in statistics.items()
        for leaf, values in zip(("running_mean", "running_var"), pair, strict=True)
    }
    for key in old:
        want = expected.get(key, old[key])
        assert new[key].dtype == old[key].dtype and new[key].tobytes() == want.tobytes(), key
    # Only the statistics (and, in zip archives, their members' CRC-32) changed.
    changed = np.count_nonzero(
        np.frombuffer(before, np.uint8) != np.frombuffer(out.read_bytes(), np.uint8)
    )
    assert 0 < changed <= 4 * 32 + 3 * 4 * 4
    assert os.stat(out).st_size == len(before)


def test_onnxruntime_runs_the_written_model_as_torch_runs_the_new_statistics(
    saved: Path, tmp_path: Path
) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    statistics = _new_statistics(2)
    out = tmp_path / "new.onnx"
    write_statistics(str(saved / "exported.onnx"), str(out), statistics)
    net = _network()
    state = torch.load(saved / "state_dict.pt", weights_only=True)
    for layer, (mean, variance) in statistics.items():
        state[f"{layer}.running_mean"] = torch.tensor(mean, dtype=torch.float32)
        state[f"{layer}.running_var"] = torch.tensor(variance, dtype=torch.float32)
    net.load_state_dict(state)
    images = np.load(saved / "images.npy")
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(images)).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {"image": images})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    old = onnxruntime.InferenceSession(str(saved / "exported.onnx"))
    assert not np.allclose(old.run(None, {"image": images})[0], logits, atol=1e-3)


def test_half_precision_statistics_are_cast_to_their_stored_type(tmp_path: Path) -> None:
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    net = _network().half()
    save_file(net.state_dict(), str(tmp_path / "half.safetensors"))
    statistics = _new_statistics(3)
    write_statistics(
        str(tmp_path / "half.safetensors"), str(tmp_path / "out.safetensors"), statistics
    )
    tensors = load_file(str(tmp_path / "out.safetensors"))
    for layer, (mean, variance) in statistics.items():
        assert tensors[f"{layer}.running_mean"].tobytes() == mean.astype(np.float16).tobytes()
        assert tensors[f"{layer}.running_var"].tobytes() == variance.astype(np.float16).tobytes()


def _refused(model: Path, out: Path, statistics: Any = None) -> str:
    with pytest.raises(WriteError) as raised:
        write_statistics(str(model), str(out), statistics or _new_statistics(4))
    message = str(raised.value)
    assert "\n" not in message and isinstance(raised.value, ModelReadError)  # exit code 3
    return message


@pytest.mark.parametrize("name", FILES)
def test_links_and_the_model_itself_are_refused(saved: Path, tmp_path: Path, name: str) -> None:
    model = tmp_path / name
    model.write_bytes((saved / name).read_bytes())
    before = model.read_bytes()
    assert "the model itself" in _refused(model, model)
    link = tmp_path / f"link-{name}"
    link.symlink_to(model)
    assert "symbolic link" in _refused(link, tmp_path / f"out-{name}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"kept")
    pointing = tmp_path / f"pointing-{name}"
    pointing.symlink_to(elsewhere)
    assert "symbolic link" in _refused(model, pointing)
    assert elsewhere.read_bytes() == b"kept" and model.read_bytes() == before
    assert not (tmp_path / f"out-{name}").exists()


@pytest.mark.parametrize("name", FILES)
def test_unknown_layers_and_wrong_sizes_are_refused(saved: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    assert "no BatchNorm layer 'features.0'" in _refused(
        saved / name, out, {"features.0": (np.zeros(6), np.ones(6))}
    )
    assert "holds 6 values; 5 were given" in _refused(
        saved / name, out, {"1": (np.zeros(5), np.ones(5))}
    )
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_an_onnx_model_with_external_data_is_refused(saved: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(saved / "exported.onnx"))
    onnx.save_model(
        model, str(tmp_path / "external.onnx"), save_as_external_data=True, size_threshold=0
    )
    message = _refused(tmp_path / "external.onnx", tmp_path / "out.onnx")
    assert "external data file" in message and message.startswith("1: input_mean")


def test_an_onnx_statistic_another_node_reads_is_refused(saved: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    model = onnx.load(str(saved / "exported.onnx"))
    model.graph.node.append(helper.make_node("Neg", ["5.running_var"], ["negated"]))
    model.graph.output.append(
        helper.make_tensor_value_info("negated", onnx.TensorProto.FLOAT, [10])
    )
    onnx.save(model, str(tmp_path / "shared.onnx"))
    assert read_model(str(tmp_path / "shared.onnx")).layers  # readable, not writable
    message = _refused(tmp_path / "shared.onnx", tmp_path / "out.onnx")
    assert message.startswith("5: input_var ('5.running_var') is shared")


def test_a_storage_shared_with_another_tensor_is_refused(saved: Path, tmp_path: Path) -> None:
    state = torch.load(saved / "state_dict.pt", weights_only=True)
    shared = torch.cat([state["5.running_mean"], state["5.bias"]])
    state["5.running_mean"] = shared[:10]
    state["5.bias"] = shared[10:]
    torch.save(state, tmp_path / "shared.pt")
    message = _refused(tmp_path / "shared.pt", tmp_path / "out.pt")
    assert message.startswith("5 running_mean: its storage") and "'5.bias'" in message


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_a_statistic_whose_storage_the_pickle_also_holds_bare_is_refused(
    saved: Path, tmp_path: Path, suffix: str
) -> None:
    """``tensor.storage()`` saved beside the state dict is a second view of the same bytes:
    writing the statistic would change it too."""
    state = torch.load(saved / "state_dict.pt", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, and still saved
        aliased = {**state, "5.mean_buffer": state["5.running_mean"].storage()}
        torch.save(aliased, tmp_path / f"aliased{suffix}")
    message = _refused(tmp_path / f"aliased{suffix}", tmp_path / f"out{suffix}")
    assert message.startswith("5 running_mean: its storage")
    assert "also held by the pickle as a storage of its own" in message
    assert not (tmp_path / f"out{suffix}").exists()
    # A bare storage of another tensor changes nothing written: the file is written.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apart = {**state, "5.bias_buffer": state["5.bias"].storage()}
        torch.save(apart, tmp_path / f"apart{suffix}")
    write_statistics(
        str(tmp_path / f"apart{suffix}"), str(tmp_path / f"out{suffix}"), _new_statistics(4)
    )
    assert (tmp_path / f"out{suffix}").exists()


def test_a_legacy_pytorch_file_is_refused(saved: Path, tmp_path: Path) -> None:
    state = torch.load(saved / "state_dict.pt", weights_only=True)
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert "legacy format" in _refused(tmp_path / "legacy.pt", tmp_path / "out.pt")


def test_other_formats_are_not_written_by_their_bytes(tmp_path: Path) -> None:
    import h5py

    (tmp_path / "notes.txt").write_text("not a model")
    assert _refused(tmp_path / "notes.txt", tmp_path / "out").startswith(
        f"{tmp_path / 'notes.txt'}: not a model file"
    )
    with h5py.File(tmp_path / "weights.h5", "w") as h5:
        h5["x"] = np.zeros(3)
    assert "does not write an HDF5 file by its bytes" in _refused(
        tmp_path / "weights.h5", tmp_path / "out.h5"
    )


def test_onnx_statistics_in_float_data_are_written_there(saved: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(saved / "exported.onnx"))
    for tensor in model.graph.initializer:
        if tensor.name.startswith("5.running"):
            values = numpy_helper.to_array(tensor)
            tensor.ClearField("raw_data")
            tensor.float_data.extend(values.tolist())
    onnx.save(model, str(tmp_path / "typed.onnx"))
    statistics = _new_statistics(5)
    write_statistics(str(tmp_path / "typed.onnx"), str(tmp_path / "out.onnx"), statistics)
    state = _state(tmp_path / "out.onnx")
    assert state["5.running_var"].tobytes() == statistics["5"][1].astype("f4").tobytes()
    assert state["1.running_mean"].tobytes() == statistics["1"][0].astype("f4").tobytes()


def test_an_onnx_statistic_held_by_a_constant_node_is_refused(saved: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    model = onnx.load(str(saved / "exported.onnx"))
    [tensor] = [t for t in model.graph.initializer if t.name == "1.running_mean"]
    constant = helper.make_node("Constant", [], ["1.running_mean"], value=tensor)
    model.graph.initializer.remove(tensor)
    model.graph.node.insert(0, constant)
    onnx.save(model, str(tmp_path / "constant.onnx"))
    assert read_model(str(tmp_path / "constant.onnx")).layers[0].path == "1"
    message = _refused(tmp_path / "constant.onnx", tmp_path / "out.onnx")
    assert message.startswith("1: input_mean is held by a Constant node")


def test_a_compressed_storage_member_is_refused(saved: Path, tmp_path: Path) -> None:
    import zipfile

    with (
        zipfile.ZipFile(saved / "state_dict.pt") as original,
        zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as deflated,
    ):
        for info in original.infolist():
            deflated.writestr(info.filename, original.read(info))
    assert read_model(str(tmp_path / "deflated.pt")).layers
    assert "is compressed" in _refused(tmp_path / "deflated.pt", tmp_path / "out.pt")
