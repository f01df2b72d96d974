"""Models of pure, allowlisted ops and built-in layers only, which pass the safety scan and then
attack the run itself: a loop that never ends, a tensor of gigabytes, a framework error whose
message (or whose native log line) quotes a name written to forge GitHub Actions commands.

The probe (and recalibrate) run the model in a worker process under ``--probe-timeout`` and
``--probe-memory``: each case must end in one escaped line and exit 3, the static report kept.
The hang cases pass a short ``--probe-timeout`` and the bombs a small ``--probe-memory`` so that
the corpus stays quick and its memory bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.hardening.hostile import HostileCase

#: A name written to break out of a one-line error: a newline, workflow commands, terminal
#: escapes (a title, clear screen, colours).
EVIL = (
    "x\n::error title=forged::all models verified OK\n::add-mask::secret\n\x1b]0;pwned\x07\x1b[2J"
)
#: The hang cases' ``--probe-timeout``, in seconds: TensorFlow's start takes seconds of it.
HANG_TIMEOUT = "20"
#: The ONNX hang's: an endless loop spins a core until it is stopped, and onnxruntime starts in
#: well under a second.
ONNX_HANG_TIMEOUT = "5"
#: The bombs' ``--probe-memory``, in MiB: above TensorFlow's own 700 MiB, below each bomb.
BOMB_MEMORY = "1536"
#: Peak memory of a whole bomb run: the limit, the parent, and the poll's overshoot.
BOMB_RSS_MIB = 2600.0
#: Peak memory of a TensorFlow probe that fails early.
TF_RSS_MIB = 1500.0
ONE_LINE = frozenset({3})


def _probe(model: Path, *limits: str) -> list[str]:
    return ["inspect", str(model), "--probe", *limits]


def _save_module(folder: Path, serve: Callable[[Any], Any]) -> Path:
    """A ``tf.Module`` SavedModel whose serving signature is ``serve`` over (N, 4) floats."""
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: Any) -> Any:
            return {"y": serve(x)}

    module = Module()
    path = folder / "model"
    tf.saved_model.save(module, str(path), signatures=module.__call__)
    return path


def _endless_while(x: Any) -> Any:
    import tensorflow as tf

    _, total = tf.while_loop(
        lambda i, s: i > -1.0,
        lambda i, s: (i + 1e-30, s + 1.0),
        (tf.constant(0.0), tf.reduce_sum(x)),
        parallel_iterations=1,
    )
    return x * total


def _fill_bomb(x: Any) -> Any:
    import tensorflow as tf

    side = tf.cast(tf.shape(x)[0], tf.int64) * 0 + 26_000  # 2.7 GB, computed at run time
    big = tf.fill(tf.stack([side, side]), tf.reduce_mean(x) + 1.0)
    return x + tf.reduce_sum(big)


def _failing_assert(x: Any) -> Any:
    import tensorflow as tf

    check = tf.debugging.Assert(tf.reduce_sum(x) > 1e30, [EVIL])
    with tf.control_dependencies([check]):
        return x * 2.0


def savedmodel_while_forever(folder: Path) -> Sequence[str]:
    return _probe(_save_module(folder, _endless_while), "--probe-timeout", HANG_TIMEOUT)


def savedmodel_fill_bomb(folder: Path) -> Sequence[str]:
    return _probe(_save_module(folder, _fill_bomb), "--probe-memory", BOMB_MEMORY)


def savedmodel_failing_assert(folder: Path) -> Sequence[str]:
    return _probe(_save_module(folder, _failing_assert))


def keras_with_config(folder: Path, layer: str, edit: Callable[[str], str]) -> Path:
    """A ``.keras`` file of BatchNormalization then ``layer`` (``dense`` or ``repeat``), saved
    by Keras, then its config edited by ``edit``: no code, built-in layers only."""
    import zipfile

    import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization(name="bn")(inputs)
    if layer == "dense":
        hidden = keras.layers.Dense(7, name="big")(hidden)
    else:
        hidden = keras.layers.RepeatVector(3, name="rep")(hidden)
    saved = folder / "saved.keras"
    keras.Model(inputs, hidden).save(saved)
    path = folder / "model.keras"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "config.json":
                data = edit(data.decode()).encode()
            target.writestr(info, data)
    saved.unlink()
    return path


def keras_dense_bomb(folder: Path) -> Sequence[str]:
    """Dense(units=10^8): Keras allocates a 1.6 GB kernel while it builds the model."""
    path = keras_with_config(
        folder, "dense", lambda text: text.replace('"units": 7', '"units": 100000000')
    )
    return _probe(path, "--probe-memory", BOMB_MEMORY)


def keras_repeat_bomb(folder: Path) -> Sequence[str]:
    """RepeatVector(n=3*10^6) after the BatchNormalization: gigabytes per batch when it runs."""
    path = keras_with_config(folder, "repeat", lambda text: text.replace('"n": 3', '"n": 3000000'))
    return _probe(path, "--probe-memory", BOMB_MEMORY)


def keras_hostile_name(folder: Path) -> Path:
    """A healthy model whose BatchNormalization layer is named ``EVIL``: TensorFlow refuses it
    as a scope name when the model runs, and its error quotes the name."""
    import keras

    inputs = keras.Input((4,))
    path = folder / "model.keras"
    keras.Model(inputs, keras.layers.BatchNormalization(name=EVIL)(inputs)).save(path)
    return path


def keras_hostile_name_probe(folder: Path) -> Sequence[str]:
    return _probe(keras_hostile_name(folder))


def keras_hostile_name_recalibrate(folder: Path) -> Sequence[str]:
    model = keras_hostile_name(folder)
    np.save(folder / "data.npy", np.random.default_rng(0).normal(size=(64, 4)).astype("float32"))
    return [
        "recalibrate",
        str(model),
        "--data",
        str(folder / "data.npy"),
        "-o",
        str(folder / "OUT.keras"),
    ]


def _onnx(folder: Path, nodes: list[Any], initializers: list[Any]) -> Path:
    """``y = f(x)`` over ``x`` of shape (N, 4) after a BatchNormalization ``bn`` of ``x``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = np.ones(4, np.float32)
    stats = [numpy_helper.from_array(channels, name) for name in ("g", "b", "v")]
    stats.append(numpy_helper.from_array(np.zeros(4, np.float32), "m"))
    bn = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["bn"], name="bn")
    graph = helper.make_graph(
        [bn, *nodes],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        stats + initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def onnx_loop_forever(folder: Path) -> Sequence[str]:
    """A Loop with a trip count of 2^62 whose body adds 1 to a scalar."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    nodes = [
        helper.make_node("Loop", ["trips", "yes", "zero"], ["acc"], body=body),
        helper.make_node("Add", ["bn", "acc"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "yes"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    return _probe(_onnx(folder, nodes, constants), "--probe-timeout", ONNX_HANG_TIMEOUT)


def onnx_constant_of_shape_bomb(folder: Path) -> Sequence[str]:
    """ConstantOfShape [30000, 30000] of float32: 3.6 GB, reduced to a scalar."""
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["big"],
            value=numpy_helper.from_array(np.array([1.0], np.float32)),
        ),
        helper.make_node("Add", ["big", "big"], ["twice"]),
        helper.make_node("ReduceSum", ["twice"], ["total"], keepdims=0),
        helper.make_node("Add", ["bn", "total"], ["y"]),
    ]
    shape = [numpy_helper.from_array(np.array([30_000, 30_000], np.int64), "shape")]
    return _probe(_onnx(folder, nodes, shape), "--probe-memory", BOMB_MEMORY)


def onnx_log_injection(folder: Path) -> Sequence[str]:
    """A Reshape node named ``EVIL`` that fails at run time (a batch of 32 into rows of 7):
    onnxruntime's own logger would print its name raw."""
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("Reshape", ["bn", "sevens"], ["rows"], name=EVIL),
        helper.make_node("Reshape", ["rows", "back"], ["y"], name="back"),
    ]
    shapes = [
        numpy_helper.from_array(np.array([7, -1], np.int64), "sevens"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "back"),
    ]
    return _probe(_onnx(folder, nodes, shapes))


def _tf(name: str, build: Callable[[Path], Sequence[str]], rss: float) -> HostileCase:
    return HostileCase(name, build, ONE_LINE, "tensorflow", rss)


def _ort(name: str, build: Callable[[Path], Sequence[str]], rss: float = 500.0) -> HostileCase:
    return HostileCase(name, build, ONE_LINE, "onnxruntime", rss)


CASES: list[HostileCase] = [
    _tf("probe-savedmodel-while-forever", savedmodel_while_forever, TF_RSS_MIB),
    _tf("probe-savedmodel-fill-2.7gb", savedmodel_fill_bomb, BOMB_RSS_MIB),
    _tf("probe-savedmodel-failing-assert-quotes-commands", savedmodel_failing_assert, TF_RSS_MIB),
    _tf("probe-keras-dense-1e8-units", keras_dense_bomb, BOMB_RSS_MIB),
    _tf("probe-keras-repeat-vector-3e6", keras_repeat_bomb, BOMB_RSS_MIB),
    _tf("probe-keras-layer-name-not-a-scope", keras_hostile_name_probe, TF_RSS_MIB),
    _tf("recalibrate-keras-layer-name-not-a-scope", keras_hostile_name_recalibrate, TF_RSS_MIB),
    _ort("probe-onnx-loop-2-62-trips", onnx_loop_forever),
    _ort("probe-onnx-constant-of-shape-3.6gb", onnx_constant_of_shape_bomb, BOMB_RSS_MIB),
    _ort("probe-onnx-node-name-in-runtime-log", onnx_log_injection),
]
