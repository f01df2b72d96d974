"""The probe: check a model file for code, load it, run it over the data, measure.

Nothing runs from a model file unless it is safe or the user said ``--unsafe``: the safety scan
reads the configuration (or the SavedModel graph) before Keras or TensorFlow loads anything.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from bncheck import formats
from bncheck.errors import ModelReadError, UsageError
from bncheck.extras import EXTRAS, require
from bncheck.probe import safety
from bncheck.probe.data.batches import BatchPlan, data_notes, sweep_progress
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import CodeReference, ProbeResult
from bncheck.records import record
from bncheck.text import shown

#: A runtime's probe (``formats.Runtime.probe``): the file, the options, where to report
#: progress, and which layers' statistics never updated, by layer path.
RuntimeProbe = Callable[[str, ProbeOptions, StepReporter, Mapping[str, bool]], ProbeResult]


def run_probe(
    path: str,
    options: ProbeOptions,
    step: StepReporter,
    untouched: Mapping[str, bool] | None = None,
) -> ProbeResult:
    """Probe one model with the runtime its format names. ``untouched`` gives, by layer path,
    whether the static description found the layer's statistics never updated. Unloadable
    models raise ``ModelReadError``; bad data, or a runtime whose extra is not installed,
    ``UsageError``."""
    found = runtime_of(path, options)
    if found is None:
        return _not_run(path, options)
    runtime = formats.RUNTIMES[found]
    require(runtime.extra, _purpose(options))
    probe: RuntimeProbe = formats.load(runtime.probe)
    return probe(path, options, step, untouched or {})


def run_probe_contained(
    path: str,
    options: ProbeOptions,
    step: StepReporter,
    untouched: Mapping[str, bool] | None = None,
) -> ProbeResult:
    """``run_probe`` in a worker process (``bncheck.isolation.run_contained``) under
    ``options``' time and memory limits, its progress relayed to ``step``: this process never
    imports the framework, and whatever the model does there (a hang, a memory bomb, a crash, a
    framework's exception quoting names from the file) is one ``ModelReadError`` line."""
    from bncheck.isolation import RunLimits, run_contained

    found = runtime_of(path, options)
    if found is None:
        return _not_run(path, options)
    # A missing extra is a usage error said here, before any worker starts.
    extra = formats.RUNTIMES[found].extra
    require(extra, _purpose(options))
    limits = RunLimits(options.timeout, options.memory_mib)
    result: ProbeResult = run_contained(
        _probe_in_worker,
        (path, options, dict(untouched or {})),
        limits,
        step,
        imports=worker_imports(extra),
        environment=worker_environment(extra),
    )
    return result


def worker_environment(extra: str) -> dict[str, str]:
    """What a contained run of a model sets in its environment: Keras on TensorFlow, which the
    probe and recalibration run it with, whatever ``KERAS_BACKEND`` the user's own code uses."""
    return {"KERAS_BACKEND": "tensorflow"} if extra == "tensorflow" else {}


def worker_imports(extra: str) -> tuple[str, ...]:
    """What a contained run of a model imports (``run_contained``'s warm server imports it
    once for all the runs of a command): the framework of ``extra``, and bncheck's probe and
    recalibration."""
    return (*EXTRAS[extra][1], "bncheck.probe.measure", __name__, "bncheck.recalibrate.command")


def runtime_of(path: str, options: ProbeOptions) -> str | None:
    """The key in ``formats.RUNTIMES`` of what runs ``path``; ``None`` when nothing does. With
    ``--architecture``, a Keras weights-only file runs in Keras
    (``probe.runtimes.architecture``), and the option given for a file of another format is a
    usage error."""
    from bncheck.readers import detect

    found = detect.sniff(path)
    if options.architecture is None:
        return found.runtime
    if not found.runs_with_architecture:
        raise UsageError(
            f"--architecture is for Keras weights-only files (.weights.h5, a save_weights .h5, "
            f".weights.json), not {found.called}: {path}"
        )
    return "keras"


def _not_run(path: str, options: ProbeOptions) -> ProbeResult:
    """Why the probe of ``path`` did not run; ``needs`` names the option that would run it."""
    from bncheck.readers import detect

    found = detect.sniff(path)
    if found.runs_with_architecture:
        return ProbeResult(
            path,
            None,
            (),
            options.unsafe,
            skipped=formats.NEEDS_ARCHITECTURE,
            needs="--architecture",
        )
    return ProbeResult(path, None, (), options.unsafe, skipped=found.not_run)


def _purpose(options: ProbeOptions) -> str:
    return "--data" if options.data is not None else "--probe"


def _probe_in_worker(
    report: StepReporter, path: str, options: ProbeOptions, untouched: Mapping[str, bool]
) -> ProbeResult:
    return run_probe(path, options, report, untouched)


def probe_keras_file(
    path: str, options: ProbeOptions, step: StepReporter, untouched: Mapping[str, bool]
) -> ProbeResult:
    """The probe of a ``.keras`` or ``.h5`` file, loaded with Keras."""
    from bncheck.probe.runtimes import keras_model
    from bncheck.probe.runtimes.backend import import_keras

    import_keras()

    if options.architecture is not None:
        return _probe_weights(path, options.architecture, options, step)
    config = safety.model_config(path)
    if config is None:
        return _not_run(path, options)
    step("checking the model for code")
    scan = scan_keras_config(config, options.unsafe, options.custom_objects)
    if scan.refusal is not None:
        return ProbeResult(path, None, scan.content, options.unsafe, skipped=scan.refusal)
    step("loading with Keras")
    model = keras_model.load_model(path, options.unsafe, scan.custom_objects)
    source = BatchPlan(keras_model.input_specs(model), options)
    return probe_keras_model(path, model, source, scan.content, options, step, untouched)


def _probe_weights(
    path: str, architecture: str, options: ProbeOptions, step: StepReporter
) -> ProbeResult:
    """A weights-only file run in the architecture of ``--architecture``: the architecture is
    checked for code as a model file is, the weights are loaded into it as Keras's
    ``load_weights`` loads them, and each layer's moving statistics must then be, value for
    value, those the weights file holds for the layer its description pairs with it."""
    from bncheck.probe.runtimes import architecture as pairing
    from bncheck.probe.runtimes import keras_model
    from bncheck.readers import read_model

    weights = read_model(path)
    if weights.format != pairing.WEIGHTS_ONLY:
        raise UsageError(
            f"{path} holds its own architecture: --architecture is for weights-only files"
        )
    shape = pairing.read_architecture(architecture, contained=False)
    config = safety.model_config(architecture)
    assert config is not None  # a .keras or full .h5 model: read_architecture checked it
    step(f"checking the architecture {architecture} for code")
    scan = scan_keras_config(config, options.unsafe, options.custom_objects)
    if scan.refusal is not None:
        return ProbeResult(path, None, scan.content, options.unsafe, skipped=scan.refusal)
    step(f"loading the architecture {architecture} with Keras, then the weights")
    model = load_architecture(architecture, options.unsafe, scan.custom_objects)
    keras_model.load_weights(model, path)
    description = pairing.paired(weights, shape)
    pairing.check_loaded(keras_model.batchnorm_layers(model), description)
    source = BatchPlan(keras_model.input_specs(model), options)
    untouched = pairing.untouched(description)
    return probe_keras_model(path, model, source, scan.content, options, step, untouched)


def load_architecture(architecture: str, unsafe: bool, custom_objects: dict[str, Any]) -> Any:
    """The model ``--architecture`` holds, loaded by Keras; a failure names that file."""
    from bncheck.probe.runtimes import keras_model

    try:
        return keras_model.load_model(architecture, unsafe, custom_objects)
    except ModelReadError as exc:
        raise ModelReadError(f"--architecture {shown(architecture)}: {exc}") from None


def probe_keras_model(
    path: str,
    model: Any,
    source: BatchPlan,
    content: tuple[CodeReference, ...],
    options: ProbeOptions,
    step: StepReporter,
    untouched: Mapping[str, bool],
) -> ProbeResult:
    """Measure a loaded Keras model on the data (see ``measure``). The comparison re-estimates
    the statistics of trainable layers, as ``bncheck recalibrate`` does by default."""
    from bncheck.probe import measure
    from bncheck.probe.runtimes import keras_model
    from bncheck.probe.runtimes.keras_runner import KerasRunner

    runner = KerasRunner(model, keras_model.batchnorm_layers(model))
    found = measure.ProbeFound(path, "keras", content, options.unsafe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras's input-structure notes are not for users
        return measure.probe_result(runner, source, found, untouched, step)


def probe_savedmodel(
    path: str, options: ProbeOptions, step: StepReporter, untouched: Mapping[str, bool]
) -> ProbeResult:
    """The probe of a SavedModel, loaded with TensorFlow: its serving signature's BatchNorm ops
    measured like a Keras model's layers (``savedmodel_runner``); where it has no signature or
    none of its ops is found, its outputs only."""
    from bncheck.probe import measure
    from bncheck.probe.runtimes import savedmodel, savedmodel_runner
    from bncheck.probe.runtimes.backend import import_keras
    from bncheck.readers import read_model

    import_keras()

    step("checking the SavedModel graph")
    content = savedmodel.scan_graph(path)
    refused = None if options.unsafe else safety.refusal(content)
    if refused is not None:
        return ProbeResult(path, None, content, options.unsafe, skipped=refused)
    step("loading with TensorFlow")
    description = read_model(path)
    why_not = "no BatchNorm op of the serving signature was found reading the layers' statistics"
    try:
        opened = savedmodel_runner.open_serving(path, description)
    except savedmodel_runner.NotRewritten as exc:
        opened, why_not = None, str(exc)
    if opened is not None and opened[0].layers:
        runner, specs = opened
        step("running the serving signature with TensorFlow")
        found = measure.ProbeFound(path, runner.loader, content, options.unsafe)
        return measure.probe_result(
            runner,
            BatchPlan(specs, options),
            found,
            untouched,
            step,
            (savedmodel_runner.NOTE, *runner.notes),
        )
    subject = savedmodel.SavedModelSubject(path)
    source = BatchPlan(subject.specs, options)
    measured = measure.measure_savedmodel(subject, source.batches, sweep_progress(step, source))
    notes = [
        f"{why_not}: per-layer measurements (BN014, BN015, where BN013 starts) need the .keras "
        "or .h5 file"
    ]
    if subject.can_train:
        notes.append("training mode switches every layer, Dropout included, not BatchNorm alone")
    else:
        notes.append(f"{subject.loader}: inference only, so collapse (BN013) cannot be judged")
    return ProbeResult(
        path=path,
        loader=subject.loader,
        content=content,
        unsafe=options.unsafe,
        data=source.describe(measured.samples, measured.batches),
        modes=measured.modes,
        outputs=measured.outputs,
        notes=data_notes(source.real, source.integer_inputs) + tuple(notes) + measured.notes,
    )


@record
class ContentScan:
    """The safety check's outcome for one Keras model file."""

    content: tuple[CodeReference, ...]
    """Code found, not counting classes the user's ``--custom-objects`` provide."""
    custom_objects: dict[str, Any]
    """The user's custom objects, to hand to Keras."""
    refusal: str | None
    """Why the model must not be loaded; ``None`` when it may."""


def scan_keras_config(
    config: Mapping[str, Any], unsafe: bool, custom_objects: str | None
) -> ContentScan:
    from bncheck.probe.runtimes import keras_model

    custom = _custom_objects(custom_objects) if custom_objects else {}
    content = safety.scan_config(config, set(custom), keras_model.builtin_layer_names())
    return ContentScan(content, custom, None if unsafe else safety.refusal(content))


@functools.lru_cache(maxsize=4)
def _custom_objects(path: str) -> dict[str, Any]:
    from bncheck.probe.runtimes import keras_model

    return keras_model.load_custom_objects(path)
