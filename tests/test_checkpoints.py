"""Checkpoints and SavedModels: how they are found and read, and the `checkpoint` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bncheck.errors import ModelReadError
from bncheck.model import CheckpointContents, ModelDescription
from bncheck.readers import read_model
from bncheck.readers.tensorflow.savedmodel import keras_nodes
from tests.conftest import FIXTURES, CliResult
from tests.report_text import unwrapped

Run = Callable[..., CliResult]
CHECKPOINTS = FIXTURES / "checkpoints"
TF1_ALL = CHECKPOINTS / "tf1_saver_all"
TF1_TRAINABLE = CHECKPOINTS / "tf1_trainable_only"
KERAS3_OBJECT = CHECKPOINTS / "keras3_object"
KERAS3_EXPORT = CHECKPOINTS / "keras3_export"
TFKERAS_SAVEDMODEL = CHECKPOINTS / "tfkeras_savedmodel"
KERAS3_MODEL = CHECKPOINTS / "keras3_cnn.keras"
KERAS3_REVISED = CHECKPOINTS / "keras3_cnn_revised.keras"
TF1_PATHS = ["conv1/BatchNorm", "conv2/batch_normalization", "fc/bn"]


def contents(description: ModelDescription) -> CheckpointContents:
    """What a checkpoint or SavedModel holds, which every description of one carries."""
    assert description.checkpoint is not None
    return description.checkpoint


def arrays(description: ModelDescription) -> dict[str, dict[str, bytes]]:
    """Every layer's arrays by path, as bytes (exact comparison)."""
    return {
        layer.path.split("/", 1)[-1] if description.format == "keras" else layer.path: {
            name: np.asarray(array, "float32").tobytes() for name, array in layer.arrays().items()
        }
        for layer in description.layers
    }


def copy_checkpoint(source: Path, target: Path, rename: Callable[[str], str]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != "checkpoint":
            shutil.copy(path, target / rename(path.name))
    return target


def table_rows(text: str) -> dict[str, list[str]]:
    """Table lines by their first word."""
    return {words[0]: words[1:] for words in map(str.split, text.splitlines()) if words}


# --- Reading ----------------------------------------------------------------------------------


def test_tf1_checkpoint_layers() -> None:
    description = read_model(str(TF1_ALL))
    assert description.format == "checkpoint"
    assert [layer.path for layer in description.layers] == TF1_PATHS
    slim, layers_style, hand_written = description.layers
    assert slim.gamma is None and slim.scale is False and slim.center is True
    assert layers_style.channels == 16 and layers_style.gamma is not None
    assert "fc/bn/moving_var" in hand_written.source
    assert all(layer.initial.assumed and layer.momentum is None for layer in description.layers)
    assert any("no layer configuration" in note for note in description.notes)


def test_object_checkpoint_and_export_hold_the_models_own_arrays() -> None:
    """Read three ways (h5 in a .keras archive, a TF2 checkpoint, a SavedModel), the same
    training gives the same arrays under the same layer paths."""
    model = arrays(read_model(str(KERAS3_MODEL)))
    assert sorted(model) == ["block/conv2_bn", "conv1_bn"]
    for path in (KERAS3_OBJECT, KERAS3_EXPORT):
        description = read_model(str(path))
        assert arrays(description) == model
        assert {g.found_by for g in contents(description).groups} == {"variable names"}


def test_tf_keras_savedmodel_configuration_comes_from_keras_metadata() -> None:
    description = read_model(str(TFKERAS_SAVEDMODEL))
    assert description.format == "savedmodel"
    assert [layer.path for layer in description.layers] == ["cnn/bn1", "cnn/block/block_bn"]
    top, frozen = description.layers
    assert top.class_name == "BatchNormalization" and top.momentum == 0.9
    assert top.epsilon == 0.001 and top.trainable is True and not top.initial.assumed
    assert frozen.trainable is False and frozen.channels == 16
    assert {g.found_by for g in contents(description).groups} == {"keras metadata"}
    assert description.notes == ()


def test_keras_metadata_kept_inside_saved_model_pb(tmp_path: Path) -> None:
    """TensorFlow 2.4 and older kept the Keras metadata in saved_model.pb's object graph."""
    from tensorflow.core.protobuf import saved_model_pb2

    legacy = tmp_path / "legacy"
    shutil.copytree(TFKERAS_SAVEDMODEL, legacy)
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((legacy / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].object_graph_def
    nodes, _ = keras_nodes(legacy)
    for node in nodes:
        node_id = 0
        for local_name in node.path:
            node_id = next(
                c.node_id for c in graph.nodes[node_id].children if c.local_name == local_name
            )
        graph.nodes[node_id].user_object.metadata = json.dumps(node.metadata)
    (legacy / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    (legacy / "keras_metadata.pb").unlink()

    description = read_model(str(legacy))
    reference = read_model(str(TFKERAS_SAVEDMODEL))
    assert [(x.path, x.momentum, x.trainable) for x in description.layers] == [
        (x.path, x.momentum, x.trainable) for x in reference.layers
    ]
    assert arrays(description) == arrays(reference)


def test_plain_tf_module_savedmodel_is_read_by_object_graph(tmp_path: Path) -> None:
    import tensorflow as tf

    class Norm(tf.Module):
        def __init__(self, channels: int, with_statistics: bool) -> None:
            super().__init__()
            self.gamma = tf.Variable(tf.fill([channels], 2.0), name="gamma")
            self.beta = tf.Variable(tf.zeros([channels]), name="beta")
            if with_statistics:
                self.moving_mean = tf.Variable(tf.fill([channels], 0.5), name="moving_mean")
                self.moving_variance = tf.Variable(tf.fill([channels], 3.0), name="moving_variance")

    module = tf.Module()
    module.bn = Norm(3, with_statistics=True)
    module.head_bn = Norm(2, with_statistics=False)
    tf.saved_model.save(module, str(tmp_path / "module"))

    description = read_model(str(tmp_path / "module"))
    [layer] = description.layers
    assert layer.path == "bn" and layer.class_name == "BatchNormalization (by variable names)"
    np.testing.assert_array_equal(layer.moving_variance, [3.0, 3.0, 3.0])
    groups = contents(description).groups
    assert [(g.path, g.found_by, g.missing_moving_stats) for g in groups] == [
        ("bn", "object graph", ()),
        ("head_bn", "object graph", ("moving_mean", "moving_variance")),
    ]


def test_text_format_savedmodel(tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    shutil.copytree(KERAS3_EXPORT, tmp_path / "text")
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((tmp_path / "text" / "saved_model.pb").read_bytes())
    (tmp_path / "text" / "saved_model.pbtxt").write_text(text_format.MessageToString(saved_model))
    (tmp_path / "text" / "saved_model.pb").unlink()
    description = read_model(str(tmp_path / "text"))
    assert arrays(description) == arrays(read_model(str(KERAS3_EXPORT)))


def test_huge_graph_is_not_searched_for_keras_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    from bncheck.readers.tensorflow import savedmodel

    monkeypatch.setattr(savedmodel, "MAX_CONFIG_BYTES", 1024)
    description = read_model(str(KERAS3_EXPORT))
    assert [layer.path for layer in description.layers] == ["conv1_bn", "block/conv2_bn"]
    assert any("not searched for Keras metadata" in note for note in description.notes)


def test_savedmodel_without_variables(tmp_path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(tf.Module(), str(tmp_path / "empty"))
    description = read_model(str(tmp_path / "empty"))
    assert description.layers == () and contents(description).groups == ()
    assert description.notes == ()
    # TF1 builders leave the folder empty when a graph has no variables (frozen into constants).
    for path in (tmp_path / "empty" / "variables").iterdir():
        path.unlink()
    description = read_model(str(tmp_path / "empty"))
    assert description.layers == () and contents(description).groups == ()
    assert any("variables/ folder holds no variables" in note for note in description.notes)


# --- Finding the checkpoint -------------------------------------------------------------------


def windows_state_file(tmp: Path) -> Path:
    target = copy_checkpoint(TF1_ALL, tmp / "copied", lambda name: name)
    (target / "checkpoint").write_text(
        'model_checkpoint_path: "C:\\\\Users\\\\ana\\\\run7\\\\model.ckpt-300"\n'
    )
    return target


def several_without_state_file(tmp: Path) -> Path:
    target = copy_checkpoint(TF1_TRAINABLE, tmp / "several", lambda n: n.replace("-300", "-10"))
    copy_checkpoint(TF1_ALL, target, lambda n: n.replace("-300", "-9"))
    return target


def stale_state_file(tmp: Path) -> Path:
    target = copy_checkpoint(TF1_ALL, tmp / "stale", lambda n: n.replace("-300", "-200"))
    (target / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-300"\n')
    return target


LOCATIONS: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    "directory with a checkpoint file": (lambda tmp: TF1_ALL, None),
    "the checkpoint file": (lambda tmp: TF1_ALL / "checkpoint", None),
    "prefix": (lambda tmp: TF1_ALL / "model.ckpt-300", None),
    "index file": (lambda tmp: TF1_ALL / "model.ckpt-300.index", None),
    "data shard": (lambda tmp: TF1_ALL / "model.ckpt-300.data-00000-of-00001", None),
    "empty prefix": (
        lambda tmp: copy_checkpoint(
            TF1_ALL, tmp / "bare", lambda n: n.replace("model.ckpt-300", "")
        ),
        None,
    ),
    "directory without a checkpoint file": (
        lambda tmp: copy_checkpoint(TF1_ALL, tmp / "nostate", lambda name: name),
        None,
    ),
    "state file from another machine": (
        windows_state_file,
        "records C:\\Users\\ana\\run7\\model.ckpt-300; read model.ckpt-300 beside it instead",
    ),
    "several checkpoints, no state file": (
        several_without_state_file,
        "2 checkpoints in the directory; read the latest, model.ckpt-10",
    ),
    "state file naming a checkpoint that is gone": (
        stale_state_file,
        "records model.ckpt-300, which does not exist; read model.ckpt-200",
    ),
}


@pytest.mark.parametrize("case", sorted(LOCATIONS))
def test_checkpoint_locations(case: str, tmp_path: Path) -> None:
    locate, note = LOCATIONS[case]
    description = read_model(str(locate(tmp_path)))
    expected = arrays(read_model(str(TF1_ALL)))
    if case == "several checkpoints, no state file":
        expected = {}  # the latest one is the trainable-only checkpoint
    assert arrays(description) == expected
    assert [g.path for g in contents(description).groups] == TF1_PATHS
    notes = [n for n in description.notes if "no layer configuration" not in n]
    if note is None:
        assert notes == []
    else:
        [only] = notes
        assert note in only


def test_absolute_stale_path_in_the_state_file_of_a_moved_checkpoint() -> None:
    state = (TF1_TRAINABLE / "checkpoint").read_text()
    assert 'model_checkpoint_path: "/' in state  # recorded on the machine that trained
    description = read_model(str(TF1_TRAINABLE))
    assert contents(description).prefix == str(TF1_TRAINABLE / "model.ckpt-300")
    assert any("read model.ckpt-300 beside it instead" in note for note in description.notes)


# --- Unreadable inputs ------------------------------------------------------------------------


def without_data(tmp: Path) -> Path:
    target = copy_checkpoint(TF1_ALL, tmp / "nodata", lambda name: name)
    (target / "model.ckpt-300.data-00000-of-00001").unlink()
    return target / "model.ckpt-300"


def corrupt_index(tmp: Path) -> Path:
    target = copy_checkpoint(TF1_ALL, tmp / "corrupt", lambda name: name)
    index = target / "model.ckpt-300.index"
    index.write_bytes(b"\0" * 64 + index.read_bytes()[64:])
    return target


def truncated_data(tmp: Path) -> Path:
    target = copy_checkpoint(TF1_ALL, tmp / "cut", lambda name: name)
    data = target / "model.ckpt-300.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    return target


def corrupt_keras_metadata(tmp: Path) -> Path:
    shutil.copytree(TFKERAS_SAVEDMODEL, tmp / "badmeta")
    (tmp / "badmeta" / "keras_metadata.pb").write_bytes(b"\xff" * 64)
    return tmp / "badmeta"


def corrupt_saved_model(tmp: Path) -> Path:
    shutil.copytree(KERAS3_EXPORT, tmp / "badsm")
    (tmp / "badsm" / "saved_model.pb").write_bytes(b"\xff" * 64)
    return tmp / "badsm"


def savedmodel_without_index(tmp: Path) -> Path:
    shutil.copytree(KERAS3_EXPORT, tmp / "noindex")
    (tmp / "noindex" / "variables" / "variables.index").unlink()
    return tmp / "noindex"


def savedmodel_without_variables_folder(tmp: Path) -> Path:
    shutil.copytree(TFKERAS_SAVEDMODEL, tmp / "novariables")
    shutil.rmtree(tmp / "novariables" / "variables")
    return tmp / "novariables"


def neither(tmp: Path) -> Path:
    (tmp / "logs").mkdir()
    (tmp / "logs" / "events.out").write_text("x")
    return tmp / "logs"


def state_file_only(tmp: Path) -> Path:
    (tmp / "lonely").mkdir()
    (tmp / "lonely" / "checkpoint").write_text('model_checkpoint_path: "/gone/model.ckpt-5"\n')
    return tmp / "lonely"


UNREADABLE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing data shard": (
        without_data,
        "missing checkpoint data shard model.ckpt-300.data-00000-of-00001",
    ),
    "corrupt index": (corrupt_index, "corrupt checkpoint index model.ckpt-300.index"),
    "truncated data": (
        truncated_data,
        "truncated checkpoint data shard model.ckpt-300.data-00000-of-00001: 100 bytes",
    ),
    "neither SavedModel nor checkpoint": (
        neither,
        "directory is neither a SavedModel (no saved_model.pb) nor a checkpoint",
    ),
    "state file without checkpoint": (
        state_file_only,
        "the checkpoint file records /gone/model.ckpt-5, which is not in",
    ),
    "corrupt keras_metadata.pb": (corrupt_keras_metadata, "keras_metadata.pb is corrupt"),
    "corrupt saved_model.pb": (corrupt_saved_model, "saved_model.pb is corrupt"),
    "SavedModel variables without index": (savedmodel_without_index, "have no index"),
    "SavedModel without variables folder": (
        savedmodel_without_variables_folder,
        "the SavedModel has no variables/ folder",
    ),
}


@pytest.mark.parametrize("command", ["inspect", "checkpoint"])
@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_checkpoints_exit_three_with_one_line(
    run_cli: Run, tmp_path: Path, case: str, command: str
) -> None:
    make, reason = UNREADABLE[case]
    path = make(tmp_path)
    result = run_cli(command, path)
    assert result.code == 3
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"bncheck: error: {path}: ")
    assert reason in line
    assert "Traceback" not in result.out + result.err


def test_reader_error_is_a_model_read_error(tmp_path: Path) -> None:
    with pytest.raises(ModelReadError, match="missing checkpoint data shard"):
        read_model(str(without_data(tmp_path)))


# --- The checkpoint command -------------------------------------------------------------------


def test_trainable_only_checkpoint(run_cli: Run) -> None:
    result = run_cli("checkpoint", TF1_TRAINABLE)
    assert result.code == 1
    assert "0/3 BN layers have moving statistics in the checkpoint" in result.out
    assert "error    BN011 checkpoint-missing-moving-stats" in result.out
    model = run_cli("checkpoint", TF1_TRAINABLE, "--format", "json").json()["models"][0]
    assert [(f["rule"], f["layer"]) for f in model["findings"]] == [
        ("BN011", path) for path in TF1_PATHS
    ]


def test_json_coverage_and_groups(run_cli: Run) -> None:
    model = run_cli("checkpoint", TF1_TRAINABLE, "--format", "json").json()["models"][0]
    assert model["format"] == "checkpoint"
    assert model["coverage"] == {"bn_layers": 3, "with_moving_stats": 0}
    checkpoint = model["checkpoint"]
    assert checkpoint["prefix"].endswith("tf1_trainable_only/model.ckpt-300")
    assert checkpoint["model"] is None and checkpoint["matches"] == []
    assert checkpoint["groups"][0] == {
        "path": "conv1/BatchNorm",
        "aliases": [],
        "found_by": "name scope",
        "keys": {"beta": "conv1/BatchNorm/beta"},
        "shapes": {"beta": [8]},
        "missing": ["moving_mean", "moving_variance"],
    }


def test_complete_checkpoint_matches_its_model(run_cli: Run) -> None:
    result = run_cli("checkpoint", KERAS3_OBJECT, "--model", KERAS3_MODEL)
    assert result.code == 0, result.out
    assert "2/2 BN layers of the model have moving statistics in the checkpoint" in result.out
    rows = table_rows(result.out)
    arrays = ["gamma,", "beta,", "moving_mean,", "moving_variance"]
    assert rows["cnn/conv1_bn"] == ["8", "conv1_bn", "layer", "path", *arrays, "[8]"]
    assert rows["cnn/block/conv2_bn"] == ["16", "block/conv2_bn", "layer", "path", *arrays, "[16]"]


def test_matches_table_shows_facts_and_findings_follow_the_configuration(run_cli: Run) -> None:
    """The table shows what each layer found; whether that restores it is BN012's to say, so
    ignoring BN012 (for the run or the layer) silences every verdict."""
    both = ["checkpoint", KERAS3_OBJECT, "--model", KERAS3_REVISED]
    judged = run_cli(*both)
    assert judged.code == 1 and "BN012 checkpoint-model-mismatch" in judged.out
    ignored = run_cli(*both, "--ignore", "BN012")
    assert ignored.code == 0
    assert "BN012" not in ignored.out and "mismatch" not in ignored.out
    assert "no match" not in ignored.out


def test_changed_model_no_longer_fits_the_checkpoint(run_cli: Run) -> None:
    result = run_cli("checkpoint", KERAS3_OBJECT, "--model", KERAS3_REVISED, "--format", "json")
    assert result.code == 1
    model = result.json()["models"][0]
    assert model["coverage"] == {"bn_layers": 3, "with_moving_stats": 1}
    assert model["checkpoint"]["matches"] == [
        {"layer": "cnn/conv1_bn", "channels": 8, "group": "conv1_bn", "matched_by": "layer path"},
        {
            "layer": "cnn/block/conv2_bn",
            "channels": 24,
            "group": "block/conv2_bn",
            "matched_by": "layer path",
        },
        {"layer": "cnn/head_bn", "channels": 16, "group": None, "matched_by": None},
    ]
    assert sorted((f["rule"], f["layer"]) for f in model["findings"]) == [
        ("BN012", "cnn/block/conv2_bn"),
        ("BN012", "cnn/head_bn"),
    ]


def test_savedmodel_variables_against_a_model(run_cli: Run) -> None:
    result = run_cli("checkpoint", KERAS3_EXPORT, "--model", KERAS3_MODEL)
    assert result.code == 0
    assert "2/2 BN layers of the model have moving statistics in the SavedModel" in result.out


def test_position_matches_are_a_finding_the_configuration_controls(run_cli: Run) -> None:
    result = run_cli("checkpoint", TFKERAS_SAVEDMODEL, "--model", KERAS3_MODEL)
    assert result.code == 0  # a warning
    assert "warning  BN020 matched-by-position  (model): " in result.out
    assert "matched checkpoint variables by position only" in unwrapped(result.out)
    rows = table_rows(result.out)
    assert rows["cnn/conv1_bn"][:3] == ["8", "cnn/bn1", "position"]
    strict = run_cli(
        "checkpoint", TFKERAS_SAVEDMODEL, "--model", KERAS3_MODEL, "--fail-on", "warning"
    )
    assert strict.code == 1
    ignored = run_cli(
        "checkpoint", TFKERAS_SAVEDMODEL, "--model", KERAS3_MODEL, "--fail-on", "warning",
        "--ignore", "BN020",
    )  # fmt: skip
    assert ignored.code == 0 and "position only" not in ignored.out


@pytest.mark.parametrize(
    ("model", "called"),
    [
        (KERAS3_MODEL, "a .keras archive"),
        (FIXTURES / "pytorch/healthy.pt", "a PyTorch file"),
        (FIXTURES / "pytorch/healthy_torchscript.pt", "a TorchScript archive"),
        (FIXTURES / "pytorch/healthy.onnx", "an ONNX model"),
    ],
)
def test_checkpoint_command_does_not_apply_to_other_models(
    run_cli: Run, model: Path, called: str
) -> None:
    result = run_cli("checkpoint", model)
    assert result.code == 2
    assert result.out == ""
    assert result.err == (
        f"bncheck: error: {model}: not a checkpoint or SavedModel but {called}; "
        "'bncheck inspect' reads it\n"
    )


def test_unreadable_model_is_named(run_cli: Run, tmp_path: Path) -> None:
    missing = tmp_path / "model.keras"
    result = run_cli("checkpoint", KERAS3_OBJECT, "--model", missing)
    assert result.code == 3
    assert result.err == f"bncheck: error: {missing}: no such file or directory\n"


def test_tensorflow_start_up_messages_stay_off_the_terminal() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "bncheck", "checkpoint", str(TF1_ALL)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "3/3 BN layers have moving statistics in the checkpoint" in done.stdout


def test_checkpoint_command_takes_the_configuration(run_cli: Run, tmp_path: Path) -> None:
    """Rules and per-layer ignores apply to checkpoint findings as to any other."""
    assert run_cli("checkpoint", TF1_TRAINABLE, "--ignore", "BN011").code == 0
    config = tmp_path / "bncheck.toml"
    config.write_text('[per-layer-ignores]\n"conv*" = ["BN011"]\n')
    report = run_cli("checkpoint", TF1_TRAINABLE, "--config", config, "--format", "json").json()
    assert [f["layer"] for f in report["models"][0]["findings"]] == ["fc/bn"]
    config.write_text("[rules.BN011]\nseverity = 'warning'\n")
    result = run_cli("checkpoint", TF1_TRAINABLE, "--config", config)
    assert result.code == 0 and "warning  BN011" in result.out


def test_header_coverage_and_verdict_count_the_same_layers(run_cli: Run) -> None:
    """A checkpoint that lost every moving statistic still has its BN layers: the header, the
    coverage line and the verdict all count three."""
    out = run_cli("checkpoint", FIXTURES / "checkpoints/tf1_trainable_only").out
    lines = out.splitlines()
    assert lines[0].endswith("(checkpoint): 3 BatchNorm layers")
    assert "0/3 BN layers have moving statistics in the checkpoint" in lines
    assert lines[-1].endswith("in 1 model, 3 BatchNorm layers (fail-on: error)")


def test_a_savedmodel_note_says_savedmodel(run_cli: Run) -> None:
    out = run_cli("inspect", KERAS3_EXPORT).out
    assert "note: the SavedModel records no layer configuration for these layers" in out
    assert "the checkpoint records" not in out
