"""The probe runs a graph without ``--unsafe`` only if every op in it is known to be pure."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bncheck.probe import pure_ops, savedmodel
from bncheck.readers.tf_protos import message_class
from tests.conftest import FIXTURES, CliResult
from tests.hardening.hostile import CANARY, graph_ops

Run = Callable[..., CliResult]
CASES = {case.name: case for case in graph_ops.CASES}
#: Ops that write, read or print to files, run Python or read datasets: never allowed.
NEVER_RUN = {
    "PrintV2", "Print", "SaveV2", "MergeV2Checkpoints", "RestoreV2", "WriteFile", "ReadFile",
    "MatchingFiles", "CreateSummaryFileWriter", "WriteScalarSummary", "WriteSummary",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "DebugIdentityV2",
    "InitializeTableFromTextFileV2", "ImmutableConst", "PyFunc", "PyFuncStateless",
    "EagerPyFunc", "TFRecordDataset", "Abort",
}  # fmt: skip
SAVEDMODEL_FIXTURES = sorted(
    {path.parent for path in FIXTURES.glob("probe/*/saved_model.pb")}
    | {path.parent for path in FIXTURES.glob("checkpoints/*export*/saved_model.pb")}
    | {path.parent for path in FIXTURES.glob("checkpoints/*savedmodel*/saved_model.pb")}
)


def test_file_writing_ops_are_never_allowed() -> None:
    allowed = pure_ops.TF_PURE_OPS & NEVER_RUN
    assert allowed == set()
    assert "FusedBatchNormV3" in pure_ops.TF_PURE_OPS and "Conv2D" in pure_ops.TF_PURE_OPS
    assert {"Constant", "BatchNormalization", "If", "Loop"} <= pure_ops.ONNX_OPS
    assert not {"RandomNormal", "RandomUniformLike", "Multinomial"} & pure_ops.ONNX_OPS


@pytest.mark.parametrize("fixture", SAVEDMODEL_FIXTURES, ids=lambda path: path.name)
def test_healthy_savedmodel_fixtures_use_only_allowed_ops(fixture: Path) -> None:
    assert len(SAVEDMODEL_FIXTURES) >= 4
    assert savedmodel.scan_graph(str(fixture)) == ()


def _node(name: str, op: str, inputs: tuple[str, ...] = (), calls: str = "") -> Any:
    node = message_class("NodeDef")(name=name, op=op, input=list(inputs))
    if calls:
        node.attr.add(key="f").value.func.name = calls
    return node


def _write(
    folder: Path,
    nodes: list[Any],
    functions: dict[str, list[Any]],
    save: str = "",
    restore: str = "",
) -> str:
    saved = message_class("GraphSavedModel")()
    meta = saved.meta_graphs.add()
    meta.graph_def.node.extend(nodes)
    for name, body in functions.items():
        function = meta.graph_def.library.function.add()
        function.signature.name = name
        function.node_def.extend(body)
    meta.saver_def.save_tensor_name = save
    meta.saver_def.restore_op_name = restore
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(saved.SerializeToString())
    return str(folder)


def _refused(path: str) -> list[tuple[str, str]]:
    return [(ref.detail, ref.where) for ref in savedmodel.scan_graph(path)]


def test_the_savers_functions_may_save_and_restore_and_nothing_else(tmp_path: Path) -> None:
    save_body = [_node("s", "SaveV2"), _node("m", "MergeV2Checkpoints")]
    saver = {"traced_save": save_body, "traced_restore": [_node("r", "RestoreV2")]}
    nodes = [
        _node("filename", "Placeholder"),
        _node("save", "StatefulPartitionedCall", ("filename",), "traced_save"),
        _node("restore", "StatefulPartitionedCall", ("filename",), "traced_restore"),
    ]
    healthy = _write(tmp_path / "healthy", nodes, saver, "save:0", "restore")
    assert _refused(healthy) == []
    # Saving where TF1 loaders restore is refused (and restoring where nothing runs).
    swapped = _write(tmp_path / "swapped", nodes, saver, "restore:0", "save")
    assert sorted(_refused(swapped)) == [
        ("MergeV2Checkpoints", "traced_save"),
        ("RestoreV2", "traced_restore"),
        ("SaveV2", "traced_save"),
    ]
    # The same save function, also called by the serving function, is refused.
    serving = {**saver, "serve": [_node("call", "PartitionedCall", (), "traced_save")]}
    called = _write(tmp_path / "called", nodes, serving, "save:0", "restore")
    assert sorted(_refused(called)) == [
        ("MergeV2Checkpoints", "traced_save"),
        ("SaveV2", "traced_save"),
    ]


def test_ops_named_by_attributes_and_top_level_nodes_are_checked(tmp_path: Path) -> None:
    nodes = [
        _node("x", "Placeholder"),
        _node("write", "WriteFile", ("x", "^x")),
        # A call naming a registered op rather than a library function runs that op.
        _node("call", "PartitionedCall", ("x",), "PrintV2"),
        _node("nested", "If", ("x",), "then"),
    ]
    functions = {"then": [_node("p", "PyFunc"), _node("loop", "While", (), "then")]}
    path = _write(tmp_path / "model", nodes, functions)
    assert sorted(_refused(path)) == [
        ("PrintV2", "graph"),
        ("PyFunc", "then"),
        ("WriteFile", "graph"),
    ]


def test_a_40000_node_chain_scans_in_linear_time(tmp_path: Path) -> None:
    count = 40_000
    nodes = [_node("n0", "Placeholder")] + [
        _node(f"n{i}", "Identity", (f"n{i - 1}:0", f"^n{i - 1}")) for i in range(1, count)
    ]
    chain = [_node(f"f{i}", "Neg", (f"f{i - 1}:y:0",)) for i in range(count)]
    path = _write(tmp_path / "chain", nodes, {"chain": chain}, "n39999:0", "n20000")
    started = time.monotonic()
    assert _refused(path) == []
    assert time.monotonic() - started < 60  # a hang limit, not a benchmark


def test_unreadable_graph_is_one_line(run_cli: Run, tmp_path: Path) -> None:
    (tmp_path / "model" / "variables").mkdir(parents=True)
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    with pytest.raises(Exception, match="unreadable saved_model.pb"):
        savedmodel.scan_graph(str(tmp_path / "model"))


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _refused_by_bn017(run_cli: Run, folder: Path, args: list[str]) -> dict[str, Any]:
    before = _listing(folder)
    result = run_cli(*args)
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    model = json.loads(result.out)["models"][0]
    assert model["probe"]["ran"] is False
    assert "pass --unsafe" in model["probe"]["skipped"]
    [bn017] = [finding for finding in model["findings"] if finding["rule"] == "BN017"]
    assert bn017["severity"] == "error"
    assert not (folder / CANARY).exists()
    assert _listing(folder) == before
    return bn017


@pytest.mark.parametrize("name", sorted(graph_ops.SAVEDMODEL_OPS))
def test_savedmodel_ops_with_effects_are_refused(run_cli: Run, tmp_path: Path, name: str) -> None:
    pytest.importorskip("tensorflow")
    args = list(CASES[name].build(tmp_path))
    bn017 = _refused_by_bn017(run_cli, tmp_path, args)
    ops = [reference["detail"] for reference in bn017["details"]["references"]]
    assert graph_ops.SAVEDMODEL_OPS[name] in ops
    assert graph_ops.SAVEDMODEL_OPS[name] in bn017["message"]
    if name == "savedmodel-print-to-file":
        # The case is live: with --unsafe, TensorFlow does append to the file.
        result = run_cli(*args, "--unsafe")
        assert result.code == 0, result.err
        assert (tmp_path / CANARY).read_text().strip() != ""


def test_plain_tf_module_probes_through_its_signature(run_cli: Run, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    model = graph_ops.save_module(tmp_path, lambda x, folder: None)
    result = run_cli("inspect", model, "--probe", "--format", "json")
    assert (result.code, result.err) == (0, "")
    probe = json.loads(result.out)["models"][0]["probe"]
    assert (probe["ran"], probe["loader"]) == (True, savedmodel.SIGNATURE)
    assert probe["data"]["inputs"] == [{"name": "x", "shape": [32, 4]}]


def test_onnx_contrib_op_is_refused(run_cli: Run, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    args = list(CASES["onnx-contrib-domain-op"].build(tmp_path))
    bn017 = _refused_by_bn017(run_cli, tmp_path, args)
    assert graph_ops.CONTRIB_OP in bn017["message"]
    # The op is real: onnxruntime runs it when the user trusts the file.
    result = run_cli(*args, "--unsafe")
    assert result.code == 0, result.err
    assert json.loads(result.out)["models"][0]["probe"]["ran"] is True


@pytest.mark.parametrize(
    "name", ["onnx-constant-external-data-up-a-level", "onnx-constant-external-data-absolute"]
)
def test_onnx_constant_with_data_outside_its_folder_is_refused(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    pytest.importorskip("onnxruntime")
    args = list(CASES[name].build(tmp_path))
    # Where onnxruntime would have found the file, reading relative to the working directory.
    monkeypatch.chdir(tmp_path / "model")
    result = run_cli(*args)
    assert result.code == 3
    [line] = result.err.splitlines()
    assert "not inside the model's folder" in line and "model.onnx" in line


def test_the_allowlists_match_the_registries_they_were_derived_from() -> None:
    """Every allowed op exists, and every op of the computation list is declared stateless."""
    pytest.importorskip("tensorflow")
    onnx_defs = pytest.importorskip("onnx.defs")
    from tensorflow.python.framework import op_def_registry

    missing = sorted(op for op in pure_ops.TF_PURE_OPS if op_def_registry.get(op) is None)
    assert missing == []
    stateful = sorted(op for op in pure_ops.TF_COMPUTE_OPS if op_def_registry.get(op).is_stateful)
    assert stateful == []
    schemas = {(schema.domain, schema.name) for schema in onnx_defs.get_all_schemas_with_history()}
    assert {("", op) for op in pure_ops.ONNX_OPS} <= schemas
    assert {("ai.onnx.ml", op) for op in pure_ops.ONNX_ML_OPS} <= schemas
