"""The probe runs a graph without ``--unsafe`` only if every op in it is known to be pure."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bncheck.errors import ModelReadError
from bncheck.probe import pure_ops
from bncheck.probe.runtimes import savedmodel
from bncheck.readers.tensorflow.tf_protos import message_class
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
    objects: tuple[str, ...] | None = (),
) -> str:
    """A SavedModel of one meta graph whose object graph names ``objects`` as concrete
    functions (``None``: no object graph, as TF1 writes)."""
    saved = message_class("GraphSavedModel")()
    meta = saved.meta_graphs.add()
    meta.graph_def.node.extend(nodes)
    for name, body in functions.items():
        function = meta.graph_def.library.function.add()
        function.signature.name = name
        function.node_def.extend(body)
    meta.saver_def.save_tensor_name = save
    meta.saver_def.restore_op_name = restore
    if objects is not None:
        meta.object_graph_def.SetInParent()
        for name in objects:
            meta.object_graph_def.concrete_functions.add(key=name)
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(saved.SerializeToString())
    return str(folder)


def _refused(path: str) -> list[tuple[str, str]]:
    return [(ref.detail, ref.where) for ref in savedmodel.scan_graph(path)]


SAVE_OPS = [("MergeV2Checkpoints", "traced_save"), ("SaveV2", "traced_save")]


def test_only_functions_nothing_but_the_saver_calls_may_save_and_restore(tmp_path: Path) -> None:
    save_body = [_node("s", "SaveV2"), _node("m", "MergeV2Checkpoints")]
    saver = {"traced_save": save_body, "traced_restore": [_node("r", "RestoreV2")]}
    functions = {**saver, "serve": [_node("mul", "Mul")]}
    nodes = [
        _node("filename", "Placeholder"),
        _node("call", "StatefulPartitionedCall", (), "serve"),
        _node("save", "StatefulPartitionedCall", ("filename",), "traced_save"),
        _node("restore", "StatefulPartitionedCall", ("filename",), "traced_restore"),
    ]

    def refused(name: str, **changes: Any) -> list[tuple[str, str]]:
        arguments: dict[str, Any] = {
            "nodes": nodes, "functions": functions, "save": "save:0", "restore": "restore",
            "objects": ("serve",), **changes,
        }  # fmt: skip
        return sorted(_refused(_write(tmp_path / name, **arguments)))

    assert refused("healthy") == []
    # No edge of the top-level graph makes a function the saver's: the serving call (and the
    # saver's own node) as inputs of the save node changes nothing.
    inputs = ("filename", "^call", "call:0", "^restore")
    edges = [*nodes[:2], _node("save", "StatefulPartitionedCall", inputs, "traced_save")]
    assert refused("edges", nodes=[*edges, nodes[3]]) == []
    # A save function also called by the serving function, by an object, by another node, by
    # a function called from anywhere else, or named as a gradient, is judged pure.
    calls_save = {**functions, "serve": [_node("c", "PartitionedCall", (), "traced_save")]}
    assert refused("called", functions=calls_save) == SAVE_OPS
    assert refused("object", objects=("serve", "traced_save")) == SAVE_OPS
    extra_node = _node("other", "PartitionedCall", (), "traced_save")
    assert refused("node", nodes=[*nodes, extra_node]) == SAVE_OPS
    nested = {**functions, "orphan": [_node("c", "If", (), "traced_save")]}
    assert refused("nested", functions=nested) == SAVE_OPS
    # The saver node calling the serving function (and no other node calling it) does not
    # make it the saver's either: the object graph names it.
    serve_saves = {"serve": save_body, "traced_restore": saver["traced_restore"]}
    hijack = [_node("save", "StatefulPartitionedCall", (), "serve"), nodes[3]]
    assert refused("hijack", nodes=hijack, functions=serve_saves) == [
        ("MergeV2Checkpoints", "serve"),
        ("SaveV2", "serve"),
    ]
    # Nor is a save function that no saver node calls.
    assert refused("orphan", nodes=[node for node in nodes if node.name != "save"]) == SAVE_OPS
    # The saver's functions may save and restore, and nothing else.
    loud = {**functions, "traced_save": [*save_body, _node("w", "WriteFile")]}
    assert refused("loud", functions=loud) == [("WriteFile", "traced_save")]
    # A top-level node is never the saver's exception, even a saver node's own op.
    top_level = [*nodes, _node("w", "SaveV2", ("^save",))]
    assert refused("top", nodes=top_level) == [("SaveV2", "graph")]


def test_a_tf1_savedmodel_is_refused_as_a_whole(tmp_path: Path) -> None:
    """Its loader runs the graph's restore and init ops, whose closure edges decide."""
    nodes = [_node("x", "Placeholder"), _node("y", "Neg", ("x",))]
    tf1 = _write(tmp_path / "tf1", nodes, {}, objects=None)
    assert _refused(tf1) == [(savedmodel.TF1_GRAPH, "saved_model.pb")]
    # Two meta graphs also send tf.saved_model.load to the TF1 loader.
    two = Path(_write(tmp_path / "two", nodes, {}))
    saved = message_class("GraphSavedModel")()
    saved.ParseFromString((two / "saved_model.pb").read_bytes())
    saved.meta_graphs.add().CopyFrom(saved.meta_graphs[0])
    (two / "saved_model.pb").write_bytes(saved.SerializeToString())
    assert _refused(str(two)) == [(savedmodel.TF1_GRAPH, "saved_model.pb")]


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


SCAN_IN_CHILD = """
import json, sys
from bncheck.errors import ModelReadError
from bncheck.probe.runtimes import savedmodel
from tests.hardening._child import peak_rss_kib
try:
    savedmodel.scan_graph(sys.argv[1])
    message = ""
except ModelReadError as error:
    message = str(error)
print(json.dumps({"message": message, "rss_mib": peak_rss_kib() / 1024}))
"""


def _scan_in_child(path: Path) -> dict[str, Any]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SCAN_IN_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _wire(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2]) + graph_ops._varint(len(payload)) + payload


def test_graph_bombs_are_refused_before_parsing_in_bounded_memory(tmp_path: Path) -> None:
    # Millions of empty nodes (parsed: over 100 bytes each), of empty inputs of one node, of
    # packed numbers in one node's tensor: refused unparsed, in a process without TensorFlow.
    graph_ops.graph_bomb(tmp_path)
    inputs = _wire(1, b"\x1a\x00" * 5_000_000)  # GraphDef.node: NodeDef.input ""
    tensor = _wire(1, _wire(5, _wire(2, _wire(8, _wire(7, b"\x01" * 20_000_000)))))
    for name, graph, refusal in (
        ("model", None, f"more than {savedmodel.MAX_GRAPH_NODES} nodes"),
        ("inputs", inputs, f"more than {savedmodel.MAX_GRAPH_FIELDS} fields"),
        ("tensor", tensor, f"more than {savedmodel.MAX_GRAPH_FIELDS} fields"),
    ):
        folder = tmp_path / name
        if graph is not None:
            folder.mkdir()
            (folder / "saved_model.pb").write_bytes(_wire(2, _wire(2, graph)))
        outcome = _scan_in_child(folder)
        assert refusal in outcome["message"] and "saved_model.pb" in outcome["message"]
        assert outcome["rss_mib"] < 400


def test_oversized_graph_files_are_refused_by_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Path(_write(tmp_path / "model", [_node("x", "Placeholder")], {}))
    monkeypatch.setattr(savedmodel, "MAX_GRAPH_BYTES", 10)
    with pytest.raises(ModelReadError, match=r"saved_model.pb is \d+ bytes, more than"):
        savedmodel.scan_graph(str(model))
    (model / "saved_model.pb").rename(model / "elsewhere.pb")
    (model / "saved_model.pbtxt").write_text("meta_graphs { graph_def { node { } } }\n" * 9)
    monkeypatch.setattr(savedmodel, "MAX_GRAPH_FIELDS", 20)
    with pytest.raises(ModelReadError, match="saved_model.pbtxt holds more than 20 fields"):
        savedmodel.scan_graph(str(model))


def test_a_graph_bomb_probe_is_one_line(run_cli: Run, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    result = run_cli(*CASES["savedmodel-graph-bomb"].build(tmp_path))
    assert result.code == 3
    [line] = result.err.splitlines()
    assert f"more than {savedmodel.MAX_GRAPH_NODES} nodes" in line


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
    if name == "savedmodel-save-v2-laundered-through-saver":
        # So is the laundered one: the loader runs the serving function, which saves.
        result = run_cli(*args, "--unsafe")
        assert result.code == 0, result.err
        assert (tmp_path / f"{CANARY}.index").is_file()


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
