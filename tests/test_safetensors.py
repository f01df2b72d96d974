"""safetensors files are read by bncheck itself: every offset checked, only BatchNorm tensors
read, 16-bit floats widened exactly, and the arrays the safetensors library itself loads."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from bncheck.readers import read_model
from tests.conftest import FIXTURES, CliResult
from tests.torch_files import bn_arrays

Run = Callable[..., CliResult]
TWINS = ["healthy", "eval_trained", "nan_variance", "frozen"]


def write(path: Path, header: Mapping[str, object], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray], dtype: str = "F32") -> Path:
    header: dict[str, object] = {}
    data = b""
    for name, values in arrays.items():
        raw = values.tobytes()
        kind = "I64" if values.dtype == np.int64 else dtype
        header[name] = {
            "dtype": kind,
            "shape": list(values.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    return write(path, header, data)


@pytest.mark.parametrize("twin", TWINS)
def test_arrays_match_the_safetensors_library_and_the_pt_twin(twin: str) -> None:
    from safetensors.numpy import load_file

    path = FIXTURES / f"pytorch/{twin}.safetensors"
    loaded = load_file(str(path))
    description = read_model(str(path))
    twin_layers = {
        layer.path: layer for layer in read_model(str(FIXTURES / f"pytorch/{twin}.pt")).layers
    }
    assert description.format == "safetensors" and len(description.layers) == 2
    for layer in description.layers:
        np.testing.assert_array_equal(layer.moving_variance, loaded[f"{layer.path}.running_var"])
        np.testing.assert_array_equal(layer.gamma, loaded[f"{layer.path}.weight"])
        assert layer.num_batches_tracked == twin_layers[layer.path].num_batches_tracked
        assert layer.framework == "pytorch"


def test_half_and_bfloat16_are_widened_exactly(tmp_path: Path) -> None:
    values = np.array([0.5, 1.0, 3.140625, -2.0], dtype="float32")  # exact in both 16-bit types
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    header = {
        "bn.running_mean": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
        "bn.running_var": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]},
        "__metadata__": {"format": "pt"},
    }
    path = write(
        tmp_path / "half.safetensors", header, bf16.tobytes() + values.astype("<f2").tobytes()
    )
    [layer] = read_model(str(path)).layers
    np.testing.assert_array_equal(layer.moving_mean, values)
    np.testing.assert_array_equal(layer.moving_variance, values)


def test_only_batchnorm_tensors_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = {"fc.weight": np.zeros(1 << 20, "float32"), **bn_arrays("bn")}
    path = write_arrays(tmp_path / "m.safetensors", arrays)
    sizes: list[int] = []
    real_open = open

    def recording_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]
        if str(file) == str(path):
            read = handle.read
            handle = _Recorder(handle, read, sizes)
        return handle

    monkeypatch.setattr("builtins.open", recording_open)
    [layer] = read_model(str(path)).layers
    assert layer.channels == 4
    assert sum(sizes) < 4096, sizes  # the header and 5 small tensors, not the 4 MiB weight


class _Recorder:
    def __init__(self, handle: object, read: Callable[..., bytes], sizes: list[int]) -> None:
        self._handle, self._read, self._sizes = handle, read, sizes

    def read(self, count: int = -1) -> bytes:
        data = self._read(count)
        self._sizes.append(len(data))
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()  # type: ignore[attr-defined]


def entry(dtype: str = "F32", shape: object = (4,), offsets: object = (0, 16)) -> dict[str, object]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        (
            {"bn.running_mean": entry(offsets=(0, 32))},
            bytes(16),
            "outside the file's 16 data bytes",
        ),
        ({"bn.running_mean": entry(offsets=(8, 4))}, bytes(16), "outside the file's"),
        ({"bn.running_mean": entry(offsets=(-4, 12))}, bytes(16), "outside the file's"),
        ({"bn.running_mean": entry(shape=(5,))}, bytes(32), "needs 20"),
        ({"bn.running_mean": entry(shape=(5,))}, bytes(16), "needs more than the 16 bytes"),
        ({"bn.running_mean": entry(shape=(1,) * 65)}, bytes(16), "at most 64 sizes"),
        (
            {"bn.running_mean": entry(), "bn.running_var": entry(offsets=(12, 28))},
            bytes(32),
            "'bn.running_mean' and 'bn.running_var' share bytes",
        ),
        ({"bn.running_mean": entry(dtype="F128")}, bytes(16), "unknown dtype"),
        ({"bn.running_mean": entry(shape=(-4,))}, bytes(16), "invalid shape"),
        ({"bn.running_mean": "x"}, bytes(16), "is not a JSON object"),
        ([1, 2], b"", "header is not a JSON object"),
    ],
)
def test_every_offset_is_checked_before_reading(
    run_cli: Run, tmp_path: Path, header: object, data: bytes, reason: str
) -> None:
    path = write(tmp_path / "bad.safetensors", header, data)  # type: ignore[arg-type]
    result = run_cli("inspect", path)
    assert result.code == 3 and reason in result.err, result.err
    assert len(result.err.splitlines()) == 1


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (struct.pack("<Q", 1 << 40) + b"{}", "exceeds the file"),
        (struct.pack("<Q", 10) + b"{not json}", "not valid JSON"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_the_header_length_is_checked(
    run_cli: Run, tmp_path: Path, head: bytes, reason: str
) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(head)
    result = run_cli("inspect", path)
    assert result.code == 3 and reason in result.err, result.err


#: Layouts of two 4-float tensors: (offsets of the first, offsets of the second, data bytes).
LAYOUTS = {
    "one after another": ((0, 16), (16, 32), 32),
    "in the other order": ((16, 32), (0, 16), 32),
    "a gap between": ((0, 16), (20, 36), 36),
    "a gap before": ((4, 20), (20, 36), 36),
    "bytes after": ((0, 16), (16, 32), 40),
    "shared bytes": ((0, 16), (8, 24), 24),
    "the same bytes": ((0, 16), (0, 16), 16),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_layout_is_refused_where_the_safetensors_library_refuses_it(
    run_cli: Run, tmp_path: Path, layout: str
) -> None:
    from safetensors import SafetensorError, safe_open

    first, second, size = LAYOUTS[layout]
    header = {
        "bn.running_mean": entry(offsets=first),
        "bn.running_var": entry(offsets=second),
    }
    data = np.arange(size // 4, dtype="<f4").tobytes()
    path = write(tmp_path / "layout.safetensors", header, data)
    try:
        with safe_open(str(path), "np") as handle:
            library = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except SafetensorError:
        library = None
    result = run_cli("inspect", path)
    if library is None:
        assert result.code == 3 and len(result.err.splitlines()) == 1, result.err
        assert result.err.startswith(f"bncheck: error: {path}: safetensors "), result.err
    else:
        assert result.code in (0, 1) and result.err == "", result.err
        layer = read_model(str(path)).layers[0]
        np.testing.assert_array_equal(layer.moving_mean, library["bn.running_mean"])
        np.testing.assert_array_equal(layer.moving_variance, library["bn.running_var"])
    # The two layouts the format defines are read; every other one is refused by both.
    assert (library is not None) == (layout in ("one after another", "in the other order"))
