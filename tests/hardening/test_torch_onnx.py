"""The PyTorch, safetensors and ONNX readers against small files built to cost gigabytes or
minutes, and shared tensors read once. Each hostile file of ``hostile/torch_onnx.py`` is run as
the user runs bncheck, with the rest of the corpus, by ``test_hostile_corpus.py``: refused in
one line (exit 3) or reported as read, within a hang limit and a memory bound."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bncheck.readers import read_model
from bncheck.readers.onnx import onnx_graph
from bncheck.readers.pytorch import pickle_vm
from bncheck.readers.pytorch.pickle_vm import Budget, PickleRefused
from tests.hardening.hostile import torch_onnx as hostile
from tests.torch_files import Tensor, dumps


def test_the_cases_are_small_on_disk(tmp_path: Path) -> None:
    for case in hostile.CASES:
        folder = tmp_path / case.name
        folder.mkdir()
        case.build(folder)
        size = sum(path.stat().st_size for path in folder.iterdir())
        assert size < 10 << 20, (case.name, size)


# --- shared tensors are read once, and read correctly ----------------------------------------


def _shared_state(layers: int, channels: int) -> tuple[dict[str, Any], np.ndarray]:
    values = np.linspace(0.5, 1.5, channels, dtype="float32")
    state = {
        f"layer{layer}.bn.{leaf}": Tensor("0", values)
        for layer in range(layers)
        for leaf in ("weight", "bias", "running_mean", "running_var")
    }
    return state, values


def _count_opens(monkeypatch: pytest.MonkeyPatch, member: str) -> list[str]:
    opened: list[str] = []
    original = zipfile.ZipFile.open

    def counting(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        filename = name.filename if isinstance(name, zipfile.ZipInfo) else name
        if filename == member:
            opened.append(filename)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", counting)
    return opened


def test_a_storage_shared_by_300_layers_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, values = _shared_state(300, 4096)
    path = hostile.torch_zip(tmp_path / "shared.pt", dumps(state), {"0": values.tobytes()})
    opened = _count_opens(monkeypatch, "archive/data/0")
    layers = read_model(str(path)).layers
    assert len(layers) == 300 and opened == ["archive/data/0"]
    for layer in layers:
        np.testing.assert_array_equal(layer.moving_variance, values)
        assert np.shares_memory(layer.moving_mean, layers[0].moving_variance)


def test_a_legacy_storage_shared_by_300_layers_is_decoded_once(tmp_path: Path) -> None:
    state, values = _shared_state(300, 4096)
    raw = values.tobytes()
    path = hostile.torch_legacy(tmp_path / "shared.pt", dumps(state, legacy=True), {"0": raw}, 4)
    layers = read_model(str(path)).layers
    assert len(layers) == 300
    np.testing.assert_array_equal(layers[-1].gamma, values)
    assert all(np.shares_memory(layer.beta, layers[0].moving_mean) for layer in layers)


def test_a_deflate_bomb_is_inflated_only_as_far_as_the_tensors_need(tmp_path: Path) -> None:
    # BatchNorm tensors at the start of a storage that would inflate to 1 GiB, and a second
    # storage, never used by BatchNorm, that would too: neither is inflated past what is read.
    state = {
        f"bn.{leaf}": Tensor("0", np.zeros(8, "float32"), numel=hostile.BOMB_BYTES // 4)
        for leaf in ("weight", "running_mean", "running_var")
    }
    state["conv.weight"] = Tensor("1", np.zeros(8, "float32"), numel=hostile.BOMB_BYTES // 4)
    bomb = hostile.deflated(hostile.BOMB_BYTES)
    path = hostile.torch_zip(tmp_path / "bomb.pt", dumps(state), {"0": bomb, "1": bomb})
    [layer] = read_model(str(path)).layers
    np.testing.assert_array_equal(layer.moving_variance, np.zeros(8))


def test_an_onnx_initializer_shared_by_1000_nodes_is_decoded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = np.linspace(0.5, 1.5, 64, dtype="<f4")
    shared = hostile._tensor("p", [64], raw_data=values.tobytes())
    nodes = [hostile._bn_node(index, ["p"] * 4) for index in range(1000)]
    path = tmp_path / "shared.onnx"
    path.write_bytes(hostile._onnx_model(nodes, [shared]))
    decoded: list[str] = []
    original = onnx_graph.tensor_array

    def counting(tensor: Any, *args: Any) -> np.ndarray:
        decoded.append(tensor.name)
        return original(tensor, *args)

    monkeypatch.setattr(onnx_graph, "tensor_array", counting)
    layers = read_model(str(path)).layers
    assert len(layers) == 1000 and decoded == ["p"]
    np.testing.assert_array_equal(layers[999].moving_mean, values)
    assert not layers[0].moving_mean.flags.writeable  # shared, so nobody may change it


# --- the pickle machine's budget -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "budget", "reason"),
    [
        (b"\x80\x02" + b"K\x010" * 50 + b"N.", Budget(steps=60), "more than 60 steps"),
        (hostile.ordered_dict_rebuilds(100, 10), Budget(steps=800), "more than 800 steps"),
        (hostile.build_flood(100, 10), Budget(steps=800), "more than 800 steps"),
        (hostile.empty_dict_flood(100), Budget(objects=50), "more than 50 objects"),
        (b"\x80\x02" + b"K\x01" * 100 + b".", Budget(stack=50), "more than 50 values"),
        (b"\x80\x02" + b"K\x01q\x01" * 3 + b"".join(
            b"r" + index.to_bytes(4, "little") for index in range(100)
        ) + b".", Budget(memo=50), "50 in its memo"),
        (
            b"\x80\x02c_codecs\nencode\nq\x00X\x00\x01\x00\x00" + b"x" * 256 + b"\x85q\x01"
            + b"h\x00h\x01R0" * 10 + b"N.",
            Budget(copied_bytes=1000),
            "copy more than 1000 bytes",
        ),
    ],
)  # fmt: skip
def test_the_pickle_budget_refuses_each_kind_of_flood(
    data: bytes, budget: Budget, reason: str
) -> None:
    with pytest.raises(PickleRefused, match=reason):
        pickle_vm.load(data, lambda pid: pid, budget)


def test_the_floods_fit_the_default_budget_once_scaled_down() -> None:
    # The same recipes, small: legitimate amounts of the same opcodes are read.
    for data in (
        hostile.ordered_dict_rebuilds(100, 10),
        hostile.build_flood(100, 10),
        hostile.empty_dict_flood(100),
    ):
        pickle_vm.load(data, lambda pid: pid)


def test_a_logged_call_renders_only_the_start_of_a_long_argument() -> None:
    _, log, _ = pickle_vm.load(hostile.logged_call_flood(1000, 1 << 20), lambda pid: pid)
    [call] = log.calls
    assert log.call_count == 1000 and len(call.arguments) <= 80
    assert call.arguments.startswith("'xxxx") and call.arguments.endswith("...")


def test_a_chain_of_calls_is_named_briefly() -> None:
    _, log, _ = pickle_vm.load(hostile.call_chain(10_000), lambda pid: pid)
    assert log.call_count == 10_000
    assert [call.target for call in log.calls] == [
        "posix.system",
        "the result of posix.system(...)",
        "the result of the result of posix.system(...)(...)",
        "the result of the result of the result of ...(...)(...)(...)",
    ]
