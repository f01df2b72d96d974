"""The probe: check a model file for code, load it, run it over the data, measure.

Nothing runs from a model file unless it is safe or the user said ``--unsafe``: the safety scan
reads the configuration (or the SavedModel graph) before Keras or TensorFlow loads anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bncheck.errors import UsageError
from bncheck.probe import data as probe_data
from bncheck.probe import safety
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import CodeReference, ProbeData, ProbeResult

#: Told after each batch of a sweep: the sweep's name and the batches done.
SweepProgress = Callable[[str, int], None]


def run_probe(
    path: str,
    options: ProbeOptions,
    step: StepReporter,
    untouched: Mapping[str, bool] | None = None,
) -> ProbeResult:
    """Probe one model. ``untouched`` gives, by layer path, whether the static description found
    the layer's statistics never updated. Unloadable models raise ``ModelReadError``, bad data
    ``UsageError``."""
    from bncheck.probe import other_frameworks
    from bncheck.probe.backend import import_keras
    from bncheck.readers import detect

    kind = detect.sniff(path)
    if kind in other_frameworks.KINDS:  # run by their own frameworks, without Keras
        return other_frameworks.probe(path, kind, options, step, untouched or {})
    import_keras()
    if kind == "savedmodel":
        return _probe_savedmodel(path, options, step)
    if kind == "checkpoint":
        return ProbeResult(
            path, None, (), options.unsafe, skipped="a checkpoint holds no architecture to run"
        )
    return _probe_keras(path, options, step, untouched or {})


def _probe_keras(
    path: str, options: ProbeOptions, step: StepReporter, untouched: Mapping[str, bool]
) -> ProbeResult:
    from bncheck.probe import keras_model

    config = safety.model_config(path)
    if config is None:
        return ProbeResult(
            path=path,
            loader=None,
            content=(),
            unsafe=options.unsafe,
            skipped="a weights-only file holds no architecture to run",
        )
    step("checking the model for code")
    scan = scan_keras_config(config, options.unsafe, options.custom_objects)
    if scan.refusal is not None:
        return ProbeResult(path, None, scan.content, options.unsafe, skipped=scan.refusal)
    step("loading with Keras")
    model = keras_model.load_model(path, options.unsafe, scan.custom_objects)
    source = BatchPlan(keras_model.input_specs(model), options)
    return probe_keras_model(path, model, source, scan.content, options, step, untouched)


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

    measured = measure.measure_keras(
        model,
        source.batches,
        reestimate=lambda _, layer: bool(layer.trainable),
        untouched=untouched,
        progress=_progress(step, source),
        real=source.real,
    )
    return ProbeResult(
        path=path,
        loader="keras",
        content=content,
        unsafe=options.unsafe,
        data=replace(
            source.describe(measured.samples, measured.batches),
            split_batch=measured.split_batch,
        ),
        modes=measured.modes,
        outputs=measured.outputs,
        layers=measured.layers,
        notes=data_notes(source.real, source.integer_inputs) + measured.notes,
    )


def _probe_savedmodel(path: str, options: ProbeOptions, step: StepReporter) -> ProbeResult:
    from bncheck.probe import measure, savedmodel

    step("checking the SavedModel graph")
    content = savedmodel.scan_graph(path)
    refused = None if options.unsafe else refusal(content)
    if refused is not None:
        return ProbeResult(path, None, content, options.unsafe, skipped=refused)
    step("loading with TensorFlow")
    subject = savedmodel.SavedModelSubject(path)
    source = BatchPlan(subject.specs, options)
    measured = measure.measure_savedmodel(subject, source.batches, _progress(step, source))
    notes = [
        "the layers inside a SavedModel are not visible: per-layer measurements (BN014, BN015, "
        "where BN013 starts) need the .keras or .h5 file"
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


@dataclass(frozen=True)
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
    from bncheck.probe import keras_model

    custom = _custom_objects(custom_objects) if custom_objects else {}
    content = safety.scan_config(config, set(custom), keras_model.builtin_layer_names())
    return ContentScan(content, custom, None if unsafe else refusal(content))


def refusal(content: Sequence[CodeReference]) -> str | None:
    """Why a model holding ``content`` must not be loaded without ``--unsafe``."""
    if not content:
        return None
    custom = sorted({ref.detail for ref in content if ref.kind == "custom-class"})
    code = [ref for ref in content if ref.kind != "custom-class"]
    reasons = []
    if code:
        listed = "; ".join(ref.describe for ref in code[:3])
        more = f" and {len(code) - 3} more" if len(code) > 3 else ""
        reasons.append(
            f"the file holds code ({listed}{more}); pass --unsafe to run it if you trust the file"
        )
    if custom:
        reasons.append(
            f"it needs custom classes bncheck does not have ({', '.join(custom[:5])}); pass "
            "--custom-objects FILE.py defining them"
        )
    return "; ".join(reasons)


@functools.lru_cache(maxsize=4)
def _custom_objects(path: str) -> dict[str, Any]:
    from bncheck.probe import keras_model

    return keras_model.load_custom_objects(path)


class BatchPlan:
    """The batches a probe runs: real data (capped at ``--samples``) or one synthetic batch."""

    def __init__(self, specs: Sequence[probe_data.InputSpec] | None, options: ProbeOptions) -> None:
        self.options = options
        self.dataset: probe_data.Dataset | None = None
        source = probe_data.chosen_source(options)
        if source is not None:
            self.dataset = probe_data.open_data(source, specs)
            self.specs = self.dataset.specs
            self._synthetic: probe_data.Batch | None = None
        else:
            self.specs = list(specs or _undeclared_inputs(options))
            self._synthetic = probe_data.synthetic_batch(
                self.specs, options.batch_size, options.seed, options.input_shapes
            )

    @property
    def real(self) -> bool:
        return self.dataset is not None

    @property
    def integer_inputs(self) -> list[str]:
        return [] if self.dataset is None else self.dataset.integer_inputs

    @property
    def expected_batches(self) -> int | None:
        if self.dataset is None:
            return 1
        if self.dataset.available is None:
            return None
        count = min(self.dataset.available, self.options.samples)
        return max(1, count // self.options.batch_size)

    def batches(self) -> Iterator[probe_data.Batch]:
        if self.dataset is None:
            assert self._synthetic is not None
            yield self._synthetic
            return
        yield from self.dataset.batches(
            self.options.batch_size, self.options.seed, self.options.samples
        )

    def describe(self, samples: int, batches: int) -> ProbeData:
        if self.dataset is None:
            assert self._synthetic is not None
            return probe_data.describe_synthetic(self._synthetic, self.specs, self.options.seed)
        if samples == 0:
            raise UsageError(f"{self.dataset.source} holds no samples")
        # Fewer samples than a batch make one batch of them all.
        batch_size = (
            min(self.options.batch_size, samples) if batches == 1 else self.options.batch_size
        )
        return self.dataset.describe(batches, samples, batch_size)


def _progress(step: StepReporter, source: BatchPlan) -> SweepProgress:
    total = source.expected_batches

    def report(sweep: str, done: int) -> None:
        if source.real and (done == 1 or done % 10 == 0 or done == total):
            of = f"/{total}" if total is not None else ""
            step(f"{sweep}: batch {done}{of}")

    return report


def _undeclared_inputs(options: ProbeOptions) -> list[probe_data.InputSpec]:
    """A subclassed model declares no inputs: take their shape from ``--input-shape``."""
    if set(options.input_shapes) == {None}:
        return [probe_data.InputSpec("input", (None, *options.input_shapes[None]), "float32")]
    raise UsageError(
        "the model declares no inputs (a subclassed model): pass --data with a .npy file "
        "or --input-shape D1,D2,..."
    )


def first_batch(
    specs: Sequence[probe_data.InputSpec] | None, options: ProbeOptions
) -> tuple[probe_data.Batch, ProbeData]:
    """One batch of the data (or the synthetic batch), for probes that judge a single batch."""
    source = BatchPlan(specs, options)
    batch = next(iter(source.batches()), None)
    if batch is None:
        assert source.dataset is not None  # the synthetic batch is never empty
        raise UsageError(f"{source.dataset.source} holds no samples")
    return batch, source.describe(batch.size, 1)


def data_notes(real: bool, integer_inputs: Sequence[str] = ()) -> tuple[str, ...]:
    if real:
        if not integer_inputs:
            return ()
        return (
            f"the data gives input(s) {', '.join(integer_inputs)} whole numbers: if the model "
            "trained on scaled inputs (pixels in [0, 1], standardised values), scale the data "
            "the same way, or the statistics and every verdict describe other inputs",
        )
    return (
        "synthetic data: staleness (BN014) and what recalibrating would change (BN015) need real "
        "data (--data); collapse (BN013) and batch-dependent inference (BN016) are judged",
    )
