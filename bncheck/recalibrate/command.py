"""``bncheck recalibrate``: re-estimate the statistics, verify the repair, write it, judge it.

1. Choose the layers: trainable ones whose statistics moved during training. Frozen layers keep
   theirs (``--include-frozen``): the layers after them learned with them. Layers whose statistics
   never moved while gamma and beta trained keep theirs too (``--include-untouched``): the network
   may have learned with them (a loop without ``training=True``), and then new statistics break it.
   A momentum of 1.0 explains such statistics without that risk, so those layers are included.
2. Estimate each chosen layer's population statistics over the data (``probe.measure.estimate``),
   on one device or, with ``--strategy``, across replicas with the same result (``distribute``).
3. Verify: run the model in inference mode with the stored and with the new statistics, on
   ``--validate`` (labelled held-out data), else on the data, measuring the metric where there
   are labels and otherwise how many predictions change.
4. Write the output only if the metric did not get worse and, without labels, few predictions
   changed (``--force`` writes anyway); then inspect the written model like ``bncheck inspect
   --data`` does, which gives the exit code. On a cluster only the chief writes.

The command and ``bncheck.recalibrate`` (``api``) run this one pipeline (``recalibrate``): each
gives it a ``Job``, which says how steps 1 to 3 run (the command loads MODEL in a worker process,
the API works on the model and data it was given) and how the result is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import field, replace
from typing import Any

from bncheck import formats, interrupts, verdict
from bncheck.engine import inspect_path
from bncheck.errors import ModelReadError, UsageError
from bncheck.extras import require
from bncheck.isolation import Reporter, RunLimits, read_contained, run_contained
from bncheck.model import BNLayer, ModelDescription, with_loaded_settings
from bncheck.probe import data as probe_data
from bncheck.probe import safety
from bncheck.probe.options import ProbeOptions
from bncheck.probe.results import Metric
from bncheck.probe.runner import scan_keras_config, worker_environment, worker_imports
from bncheck.progress import Progress
from bncheck.readers import detect, read_model
from bncheck.recalibrate.distribute import is_chief, make_strategy
from bncheck.recalibrate.options import RecalibrateOptions
from bncheck.recalibrate.results import (
    DID_NOT_RUN,
    FROZEN,
    NOT_LOADED,
    UNTOUCHED,
    LayerChange,
    Recalibration,
    Verification,
)
from bncheck.recalibrate.runtimes import RUNS_ITSELF
from bncheck.recalibrate.write import NewStatistics, write_model
from bncheck.records import record
from bncheck.settings import Settings
from bncheck.text import shown

#: The formats recalibration writes back with Keras; the others are written by their bytes
#: (``runtimes``), weights-only Keras files not at all.
WRITABLE = ("keras", "h5")
#: A weights-only Keras file: written as an HDF5 file, run in ``--architecture``'s model.
WEIGHTS = "weights-h5"
#: The formats that are folders: OUT is a new folder.
FOLDERS = ("savedmodel",)


@record
class Plan:
    """How to estimate and verify, whichever way the model and the data came (the command
    line, or ``bncheck.recalibrate`` from Python)."""

    batch_size: int = 32
    samples: int | None = None
    """Use at most this many samples of the data; ``None`` for all of it."""
    seed: int = 0
    include_frozen: bool = False
    include_untouched: bool = False
    settings: Settings = field(default_factory=Settings)
    """BN015's limits decide whether an unlabelled result is verified."""
    whole: bool = False
    """Only full batches (a model that takes no other batch size): a short last one is left
    out."""

    @classmethod
    def of(cls, options: RecalibrateOptions) -> Plan:
        return cls(
            batch_size=options.batch_size,
            samples=options.samples,
            seed=options.seed,
            include_frozen=options.include_frozen,
            include_untouched=options.include_untouched,
            settings=options.settings,
        )


@record
class Job:
    """One recalibration, however it was asked for: how to estimate and where the result goes."""

    estimate: Callable[[], tuple[Recalibration, bool]]
    """Steps 1 to 3: the result, and whether this process writes (on a cluster, the chief)."""
    output: str | None
    """Where the result is written; ``None``: nowhere, it is only measured."""
    write: Callable[[Recalibration], Recalibration]
    """Writes the result to ``output``; the result as written."""
    on_every_worker: bool = False
    """Every worker writes, not only the chief (a live model's own variables)."""


def recalibrate(
    options: RecalibrateOptions, progress: Progress, job: Job | None = None
) -> Recalibration:
    """Estimate, verify, and write (on a cluster, the chief does) unless the result is refused.
    Without ``job``, the command's: MODEL estimated in a worker process, written to ``-o OUT``,
    which is then inspected."""
    if job is None:
        job = command_job(options, progress)
    result, chief = job.estimate()
    if job.output is None:
        return result
    if result.verification is None:
        return result
    if result.refusal is not None and not options.force:
        return result
    if not chief and not job.on_every_worker:
        return replace(result, writer="the chief")
    progress.step(f"{result.model}: writing {job.output}")
    return job.write(result)


def command_job(options: RecalibrateOptions, progress: Progress) -> Job:
    """``bncheck recalibrate MODEL -o OUT``: everything that can be checked before the model
    runs is checked here."""
    description = writable_description(options.model, options.architecture)
    if description.format in FOLDERS and options.output and os.path.lexists(options.output):
        raise UsageError(
            f"-o {options.output} exists: a SavedModel is written to a new folder OUT, never "
            "over one"
        )
    if description.format in FOLDERS and options.output:
        inside = os.path.commonpath(
            [os.path.realpath(options.model), os.path.realpath(options.output)]
        )
        if inside == os.path.realpath(options.model):
            raise UsageError(
                f"-o {options.output} is inside {options.model}: write the new SavedModel "
                "outside the one it is made from"
            )
    other_framework = description.format not in (*WRITABLE, WEIGHTS)
    if other_framework and (
        options.in_place
        or (
            options.output is not None
            and os.path.realpath(options.output) == os.path.realpath(options.model)
        )
    ):
        # Said before OUT is checked, which would offer --in-place.
        from bncheck import formats

        called = formats.FORMATS[description.format].called
        raise UsageError(
            f"{options.model}: {called} is written to a new file, never over itself: give "
            "-o OUT naming another file"
        )
    output = output_path(options.model, options.output, options.in_place, _written_as(description))
    assert output is not None  # the command always writes
    _refuse_overwriting_inputs(options, output)
    if other_framework:
        from bncheck.recalibrate import runtimes

        if options.strategy is not None:
            raise UsageError("--strategy runs Keras models; this model runs in one process")
        extra = runtimes.extra(runtimes.runnable_path(options, description))
        require(extra, "recalibrate")
    elif options.runnable is not None:
        raise UsageError(
            "--runnable is for a model that holds no architecture (.pt, .pth, .safetensors); a "
            ".keras or .h5 model runs itself"
        )
    else:
        extra = "tensorflow"
        require(extra, "bncheck recalibrate")
    if probe_data.chosen_source(options) is None:
        raise UsageError("recalibrate needs data: --data, --tfrecord or --dataset-fn")

    def estimate() -> tuple[Recalibration, bool]:
        # Loading and estimating run the model: in a worker process under the limits, like the
        # probe, so that whatever the model does there is one line. Writing stays here.
        limits = RunLimits(options.timeout, options.memory_mib)
        try:
            return run_contained(
                _estimate,
                (options, description, output),
                limits,
                lambda m: _relay(progress, m),
                imports=worker_imports(extra),
                environment=worker_environment(extra),
            )
        except ModelReadError as exc:
            raise ModelReadError(f"recalibrate: {exc}") from None

    def write(result: Recalibration) -> Recalibration:
        if description.format in (*WRITABLE, WEIGHTS):
            kind = "h5" if description.format == WEIGHTS else description.format
            write_model(options.model, output, kind, updates(description, result))
        else:
            from bncheck.recalibrate.writers import write_statistics

            write_statistics(
                options.model,
                output,
                {path: (pop.mean, pop.variance) for path, pop in result.statistics.items()},
            )
        interrupts.written(shown(output))  # stopped from here on, the command says so
        repaired = inspect_path(output, options.settings, _probe_options(options), progress.step)
        return result.written(output, repaired)

    return Job(estimate, output, write)


def _estimate(
    report: Reporter, options: RecalibrateOptions, description: ModelDescription, output: str
) -> tuple[Recalibration, bool]:
    """Steps 1 to 3 in the worker process: the result, and whether this process writes."""
    from bncheck.probe.runtimes import keras_model

    progress = _RelayedProgress(report)
    source = probe_data.chosen_source(options)
    assert source is not None  # checked before the worker started
    if description.format not in (*WRITABLE, WEIGHTS):
        return _estimate_with_runner(options, description, source, output, progress), True
    strategy = make_strategy(options.strategy, options.devices)
    model = load(
        options.architecture or options.model,
        options.unsafe,
        options.custom_objects,
        progress,
        strategy,
    )
    if options.architecture is not None:
        from bncheck.probe.runtimes.architecture import check_loaded

        progress.step(f"{options.model}: loading the weights")
        keras_model.load_weights(model, options.model)
        # The statistics are written where the description read them: only if Keras loaded
        # those very values into each layer is that where this layer's statistics are stored.
        check_loaded(keras_model.batchnorm_layers(model), description)
    dataset = probe_data.open_data(source, keras_model.input_specs(model))
    validation = _validation(options, dataset.specs)
    result = reestimate(
        model,
        description,
        dataset,
        validation,
        Plan.of(options),
        progress,
        strategy,
        options.model,
        output,
    )
    return result, is_chief(strategy)


def _estimate_with_runner(
    options: RecalibrateOptions,
    description: ModelDescription,
    source: probe_data.DataSource,
    output: str,
    progress: Progress,
) -> Recalibration:
    """Steps 1 to 3 for a model its runtime runs (``runtimes``): the layers matched, their
    statistics estimated and verified as for a Keras model."""
    from bncheck.probe.measure import estimate
    from bncheck.recalibrate import runtimes

    path = runtimes.runnable_path(options, description)
    progress.step(f"{path}: loading")
    runner, specs = runtimes.open_runner(path, options)
    dataset = probe_data.open_data(source, specs)
    validation = _validation(options, dataset.specs)
    plan = runtimes.fitted(Plan.of(options), runner, progress)
    try:
        targets, kept = runtimes.choose(
            description, runner.layers, plan.include_frozen, plan.include_untouched
        )
    except UsageError as exc:  # the runnable file is not MODEL's twin: named first
        raise UsageError(f"{path}: {exc}") from None
    if not targets:
        return _nothing_to_do(
            options.model, output, dataset.source, description, kept, plan.settings
        )
    sweeper = runtimes.Sweeper(runner)
    with runner:
        progress.start_batches(f"{options.model}: estimating")
        total = _batch_count(dataset, plan.batch_size, plan.samples)
        sums, batches, samples = estimate(
            sweeper,  # type: ignore[arg-type]  # the runner swept as Passes sweeps
            dataset.batches(plan.batch_size, plan.seed, plan.samples, plan.whole),
            lambda done, seen: progress.batch(done, total, seen),
        )
        if batches == 0:
            raise UsageError(f"{dataset.source} holds no samples")
        chosen = {layer.path for layer in targets}
        new = {path: sums[path].population() for path in chosen if path in sums}
        runner.use_estimates({path: (pop.mean, pop.variance) for path, pop in new.items()})
        progress.start_batches(f"{options.model}: verifying")
        check = verify(sweeper, validation or dataset, plan, validation is not None, progress)
    progress.done()
    kept.update(dict.fromkeys(chosen - set(new), DID_NOT_RUN))
    epsilons = {layer.path: layer.epsilon for layer in runner.layers}
    return Recalibration(
        model=options.model,
        output=output,
        data=dataset.source,
        batches=batches,
        samples=samples,
        layers=tuple(
            _change(layer, new, kept, epsilons.get(layer.path, 1e-5))
            for layer in description.layers
        ),
        verification=check,
        refusal=_refusal(check, plan.settings),
        fail_on=plan.settings.fail_on,
        statistics=new,
    )


#: The ``Progress`` calls a worker relays to the terminal's ``Progress``.
_RELAYED = ("step", "start_batches", "batch", "done")


class _RelayedProgress(Progress):
    """The worker's progress: each call goes to the parent process, which shows it."""

    def __init__(self, report: Reporter) -> None:
        self._report = report
        self.enabled = True

    def step(self, text: str) -> None:
        self._report(("step", (text,)))

    def start_batches(self, label: str) -> None:
        self._report(("start_batches", (label,)))

    def batch(self, done: int, total: int | None, samples: int | None = None) -> None:
        self._report(("batch", (done, total, samples)))

    def done(self) -> None:
        self._report(("done", ()))


def _relay(progress: Progress, message: Any) -> None:
    name, args = message
    if name in _RELAYED:
        getattr(progress, name)(*args)


def reestimate(
    model: Any,
    description: ModelDescription,
    dataset: probe_data.Dataset,
    validation: probe_data.Dataset | None,
    plan: Plan,
    progress: Progress,
    strategy: Any = None,
    name: str = "model",
    output: str | None = None,
) -> Recalibration:
    """Choose the layers of ``model`` (described by ``description``), estimate their statistics
    over ``dataset`` and verify them on ``validation`` (else on ``dataset``), on one device or
    with ``strategy``, under whose scope ``model`` was loaded. Writes nothing."""
    from bncheck.probe.measure import estimate
    from bncheck.probe.runtimes import keras_model
    from bncheck.probe.runtimes.passes import Passes

    layers = keras_model.batchnorm_layers(model)
    description = with_loaded_settings(
        description, {path: (float(layer.momentum), float(layer.epsilon)) for path, layer in layers}
    )
    targets, kept = choose(description, layers, plan.include_frozen, plan.include_untouched)
    if not targets:
        return _nothing_to_do(name, output, dataset.source, description, kept, plan.settings)
    forced = [path for path, layer in targets if not layer.trainable]
    with Passes(model, layers, force=forced, strategy=strategy, figures=False) as passes:
        progress.start_batches(f"{name}: estimating")
        total = _batch_count(dataset, plan.batch_size, plan.samples)
        sums, batches, samples = estimate(
            passes,
            dataset.batches(plan.batch_size, plan.seed, plan.samples),
            lambda done, seen: progress.batch(done, total, seen),
        )
        if batches == 0:
            raise UsageError(f"{dataset.source} holds no samples")
        chosen = {path for path, _ in targets}
        new = {path: sums[path].population() for path in chosen if path in sums}
        passes.use_estimates({path: (pop.mean, pop.variance) for path, pop in new.items()})
        checked = validation or dataset
        progress.start_batches(f"{name}: verifying")
        check = verify(passes, checked, plan, validation is not None, progress)
    progress.done()
    kept.update(dict.fromkeys(chosen - set(new), DID_NOT_RUN))
    epsilons = {path: float(layer.epsilon) for path, layer in layers}
    changes = tuple(
        _change(layer, new, kept, epsilons.get(layer.path, 1e-3)) for layer in description.layers
    )
    return Recalibration(
        model=name,
        output=output,
        data=dataset.source,
        batches=batches,
        samples=samples,
        layers=changes,
        verification=check,
        refusal=_refusal(check, plan.settings),
        fail_on=plan.settings.fail_on,
        statistics=new,
    )


def _data_options(
    options: RecalibrateOptions, path: str, labels: str | None, option: str = "--data"
) -> probe_data.DataOptions:
    return probe_data.DataOptions(path, labels, options.image_size, options.rescale, option)


def _validation(
    options: RecalibrateOptions, specs: Sequence[probe_data.InputSpec]
) -> probe_data.Dataset | None:
    if options.validate is None:
        if options.validate_labels is not None:
            raise UsageError("--validate-labels needs --validate")
        return None
    validation = probe_data.open_data(
        _data_options(options, options.validate, options.validate_labels, "--validate"), specs
    )
    if not validation.labelled:
        raise UsageError(
            f"--validate {options.validate} has no labels: give an .npz holding "
            f"'{probe_data.LABELS_KEY}', --validate-labels FILE.npy, or a folder of class "
            "subfolders"
        )
    return validation


def _batch_count(dataset: probe_data.Dataset, batch_size: int, samples: int | None) -> int | None:
    """Whole batches a pass serves, where the data says how many samples it holds or
    ``samples`` caps them."""
    available = dataset.available if dataset.available is not None else samples
    if available is None:
        return None
    return max(1, min(available, samples or available) // batch_size)


def verify(
    passes: Any,
    dataset: probe_data.Dataset,
    plan: Plan,
    held_out: bool,
    progress: Progress,
) -> Verification:
    """The model with its stored statistics against the model with the estimates, in inference
    mode, on every sample of ``dataset``."""
    from bncheck.probe import uncertainty
    from bncheck.probe.measure import MetricSums, OutputSums
    from bncheck.probe.runtimes.passes import ESTIMATED, STORED

    totals = OutputSums()
    before, after = MetricSums(), MetricSums()
    samples = 0
    total = None if dataset.available is None else -(-dataset.available // plan.batch_size)
    steps = passes.sweep(
        dataset.batches(plan.batch_size, plan.seed, None, whole=plan.whole), STORED, ESTIMATED
    )
    for number, step in enumerate(steps, 1):
        stored, estimated = step.results
        first_before, first_after = stored.outputs[0][1], estimated.outputs[0][1]
        totals.add_inference(first_before)
        totals.add_estimated(first_before, first_after)
        if step.labels is not None and len(stored.outputs) == 1:
            before.add(first_before, step.labels)
            after.add(first_after, step.labels)
        samples += step.size
        progress.batch(number, total, samples)
    metric = None
    if before.name is not None:
        change = uncertainty.paired_change(before.values(), after.values(), seed=plan.seed)
        metric = Metric(before.name, float(before.value() or 0.0), after.value(), None, change)
    measured = totals.measurement("output", trained=False, estimated=True, metric=metric)
    return Verification(
        on=dataset.source,
        held_out=held_out,
        samples=samples,
        metric=metric,
        changed_predictions=(
            None
            if measured.reestimated_top1_agreement is None
            else 1.0 - measured.reestimated_top1_agreement
        ),
        relative_change=measured.reestimated_relative_error or 0.0,
    )


def _refusal(check: Verification, settings: Settings) -> str | None:
    """Why the output must not be written without ``--force``; ``None`` when it may."""
    metric = check.metric
    if metric is not None:
        assert metric.reestimated is not None
        verb = "rise" if metric.reestimated > metric.stored else "fall"
        moved = (
            f"{metric.name} on {check.described} would {verb} from "
            f"{metric.format(metric.stored)} to {metric.format(metric.reestimated)}"
        )
        if metric.reestimated == metric.stored:
            moved = (
                f"{metric.name} on {check.described} would stay at {metric.format(metric.stored)}"
            )
        # BN015's rule (``verdict.metric_advice``): written only what the data shows to be
        # better; no change, or one the interval cannot tell from none, is no evidence.
        advice = verdict.metric_advice(metric, settings.rules[verdict.EFFECT_RULE].options)
        if advice is verdict.Advice.RECALIBRATE:
            return None
        if metric.change is not None:
            moved += f" ({metric.describe_change()})"
        if advice is verdict.Advice.KEEP:
            return moved
        return f"{moved}: {verdict.inconclusive_on(metric)}"
    limits = settings.rules["BN015"].options
    if check.changed_predictions is not None:
        if check.changed_predictions > limits["max_changed_predictions"]:
            return (
                f"the top-1 class of {check.changed_predictions:.0%} of the samples of "
                f"{check.described} would change, and without labels bncheck cannot tell "
                "whether for the better: unverified (pass --validate HELD_OUT)"
            )
    elif check.relative_change > limits["max_relative_change"]:
        return (
            f"the outputs on {check.described} would change by {check.relative_change:.3g} "
            "relative to their norm, and without labels bncheck cannot tell whether for the "
            "better: unverified (pass --validate HELD_OUT)"
        )
    return None


def _probe_options(options: RecalibrateOptions) -> ProbeOptions:
    """The inspection of the written model probes it on one device, on the held-out data where
    there is some: statistics estimated from the calibration data always fit that data, so only
    other data can show that they, or the data, were wrong."""
    common: dict[str, Any] = {
        "batch_size": options.batch_size,
        "seed": options.seed,
        "image_size": options.image_size,
        "rescale": options.rescale,
        "unsafe": options.unsafe,
        "custom_objects": options.custom_objects,
        "architecture": options.architecture,
        "timeout": options.timeout,
        "memory_mib": options.memory_mib,
    }
    if options.validate is not None:
        return ProbeOptions(data=options.validate, labels=options.validate_labels, **common)
    return ProbeOptions(
        data=options.data,
        labels=options.labels,
        records=options.records,
        dataset_fn=options.dataset_fn,
        **common,
    )


def _nothing_to_do(
    name: str,
    output: str | None,
    data: str,
    description: ModelDescription,
    kept: dict[str, str],
    settings: Settings,
) -> Recalibration:
    return Recalibration(
        model=name,
        output=output,
        data=data,
        batches=0,
        samples=0,
        layers=tuple(
            LayerChange(layer.path, kept.get(layer.path, NOT_LOADED))
            for layer in description.layers
        ),
        verification=None,
        refusal=_kept_all(len(description.layers)),
        fail_on=settings.fail_on,
    )


def _kept_all(layers: int) -> str:
    if layers == 0:
        return "the model has no BatchNorm layer"
    if layers == 1:
        return "its one BatchNorm layer keeps its statistics"
    return f"all {layers} BatchNorm layers keep their statistics"


def writable_description(path: str, architecture: str | None = None) -> ModelDescription:
    # A model of another format is readable; recalibrate does not apply to it (a usage error).
    found = detect.sniff(path)
    if found.writer is None:
        raise UsageError(
            f"{path}: recalibrate reads and writes {formats.writable_models()}, not "
            f"{found.called}; {found.not_written}"
        )
    description = read_contained(read_model, path)
    if description.format == WEIGHTS:
        if architecture is None:
            raise UsageError(f"{path}: {formats.NEEDS_ARCHITECTURE}")
        from bncheck.probe.runtimes.architecture import paired, read_architecture

        # The layers named and set as the architecture's, at the weights file's locations.
        return paired(description, read_architecture(architecture))
    if architecture is not None:
        raise UsageError(
            f"{path} holds its own architecture: --architecture is for a weights-only file "
            "(.weights.h5, a save_weights .h5)"
        )
    if description.format not in WRITABLE and description.format not in RUNS_ITSELF:
        raise UsageError(
            f"{path}: recalibrate reads and writes {formats.writable_models()}, not "
            f"{description.format} inputs; {formats.WEIGHTS_ONLY}"
        )
    return description


def load(
    path: str, unsafe: bool, custom_objects: str | None, progress: Progress, strategy: Any = None
) -> Any:
    """Check the file for code, then load it with Keras (as the probe does), under
    ``strategy``'s scope when there is one."""
    from bncheck.probe.runtimes import keras_model
    from bncheck.probe.runtimes.backend import import_keras

    progress.step(f"{path}: checking the model for code")
    import_keras()
    config = safety.model_config(path)
    if config is None:
        raise ModelReadError("the file holds no architecture to run")
    scan = scan_keras_config(config, unsafe, custom_objects)
    if scan.refusal is not None:
        raise UsageError(f"{path}: {scan.refusal}")
    progress.step(f"{path}: loading with Keras")
    with contextlib.nullcontext() if strategy is None else strategy.scope():
        return keras_model.load_model(path, unsafe, scan.custom_objects)


def updates(description: ModelDescription, result: Recalibration) -> dict[str, NewStatistics]:
    """Where each re-estimated layer's statistics go in the file ``description`` read."""
    by_path = {layer.path: layer for layer in description.layers}
    return {
        path: NewStatistics(
            moving_mean=population.mean,
            moving_variance=population.variance,
            mean_location=by_path[path].locations["moving_mean"],
            variance_location=by_path[path].locations["moving_variance"],
        )
        for path, population in result.statistics.items()
    }


def _change(
    layer: BNLayer, new: dict[str, Any], kept: dict[str, str], epsilon: float
) -> LayerChange:
    if layer.path not in new:
        return LayerChange(layer.path, kept.get(layer.path, NOT_LOADED))
    population = new[layer.path]
    return LayerChange.measured(
        layer.path,
        (layer.moving_mean, layer.moving_variance),
        (population.mean, population.variance),
        epsilon,
    )


#: The suffixes Keras loads each writable format from: ``weights.h5`` is Keras 3's weights
#: layout, which ``load_weights`` reads from no other name.
SUFFIXES = {"keras": (".keras",), "h5": (".h5", ".hdf5"), "weights.h5": (".weights.h5",)}


def _written_as(description: ModelDescription) -> str:
    """The key in ``SUFFIXES`` (or the format) OUT is named by: a weights-only file keeps its
    layout, Keras 3's or the legacy ``save_weights`` one, and so the name Keras loads it by."""
    if description.format != WEIGHTS:
        return description.format
    # Keras 3 keeps every variable under ``layers/`` or ``vars/``, the legacy layout under
    # each layer's name (``weights_h5.is_keras3_layout``).
    tops = {
        location.split("/", 1)[0]
        for layer in description.layers
        for location in layer.locations.values()
    }
    if not tops:
        return WEIGHTS  # nothing is written where nothing was read: any name
    return "weights.h5" if tops <= {"layers", "vars"} else "h5"


@record
class Spelling:
    """How the messages name the output and the permission to overwrite: flags on the command
    line, arguments in Python."""

    output: str = "-o"
    in_place: str = "--in-place to do so"
    required: bool = True
    """Whether the output must be given (the API only measures without one)."""


COMMAND_LINE = Spelling()


def _refuse_overwriting_inputs(options: RecalibrateOptions, output: str) -> None:
    """OUT is none of the files the command reads besides MODEL: the runnable twin, the data,
    the labels, the custom objects."""
    for option, path in (
        ("--runnable", options.runnable),
        ("--architecture", options.architecture),
        ("--data", options.data),
        ("--labels", options.labels),
        ("--validate", options.validate),
        ("--validate-labels", options.validate_labels),
        ("--custom-objects", options.custom_objects),
    ):
        exist = path is not None and os.path.exists(output) and os.path.exists(path)
        if exist and os.path.samefile(output, str(path)):
            raise UsageError(f"refusing to overwrite {path}, the {option} file, with OUT")


def output_path(
    model: str | None,
    output: str | None,
    in_place: bool,
    format_name: str | None,
    spelling: Spelling = COMMAND_LINE,
) -> str | None:
    """Where to write, checked before any work is done: a file in a folder that exists, named
    so that Keras loads it in ``format_name``'s format (``None``: any), never over the model
    file ``model`` unless ``in_place``. ``None``: nothing is to be written."""
    if output is None:
        if in_place:
            return model
        if spelling.required:
            raise UsageError("recalibrate needs -o OUT (or --in-place to overwrite MODEL)")
        return None
    if not output.strip():
        raise UsageError(f"{spelling.output} is empty: give the file to write")
    if os.path.isdir(output):
        raise UsageError(f"{spelling.output} {output} is a directory: give the file to write")
    suffixes = SUFFIXES.get(format_name or "")
    if suffixes and not output.lower().endswith(suffixes):
        # OUT is MODEL's file with new statistics: Keras picks its loader by the suffix.
        raise UsageError(
            f"{spelling.output} {output}: MODEL is a {suffixes[0]} file and OUT keeps its "
            f"format, so name it {' or '.join(suffixes)}"
        )
    same = model is not None and os.path.exists(output) and os.path.samefile(output, model)
    if same and not in_place:
        raise UsageError(
            f"refusing to overwrite {model} (the model itself); pass {spelling.in_place}"
        )
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {output}: no such directory {directory}")
    return output


def choose(
    description: ModelDescription,
    layers: Sequence[tuple[str, Any]],
    include_frozen: bool,
    include_untouched: bool,
) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """The layers to re-estimate, and why each other one keeps its statistics."""
    in_file = {layer.path: layer for layer in description.layers}
    targets, kept = [], {}
    for path, layer in layers:
        stored = in_file.get(path)
        if stored is None or not {"moving_mean", "moving_variance"} <= set(stored.locations):
            continue
        if stored.trainable is False and not include_frozen:
            kept[path] = FROZEN
            continue
        if verdict.learned_without_batch_statistics(stored) and not include_untouched:
            kept[path] = UNTOUCHED
            continue
        targets.append((path, layer))
    chosen = {path for path, _ in targets}
    for path in in_file:
        if path not in kept and path not in chosen:
            kept[path] = NOT_LOADED
    return targets, kept
