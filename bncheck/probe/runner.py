"""The probe: check a model file for code, load it, pick a batch, measure both modes.

Nothing runs from a model file unless it is safe or the user said ``--unsafe``: the safety scan
reads the configuration (or the SavedModel graph) before Keras or TensorFlow loads anything.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.errors import UsageError
from bncheck.probe import data as probe_data
from bncheck.probe import safety
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import CodeReference, ProbeData, ProbeResult


def run_probe(path: str, options: ProbeOptions, step: StepReporter) -> ProbeResult:
    """Probe one model. Unloadable models raise ``ModelReadError``, bad data ``UsageError``."""
    from bncheck.probe import other_frameworks
    from bncheck.probe.backend import import_keras
    from bncheck.readers import detect

    kind = detect.sniff(path)
    if kind in other_frameworks.KINDS:  # run by their own frameworks, without Keras
        return other_frameworks.probe(path, kind, options, step)
    import_keras()
    if kind == "savedmodel":
        return _probe_savedmodel(path, options, step)
    if kind == "checkpoint":
        return ProbeResult(
            path, None, (), options.unsafe, skipped="a checkpoint holds no architecture to run"
        )
    return _probe_keras(path, options, step)


def _probe_keras(path: str, options: ProbeOptions, step: StepReporter) -> ProbeResult:
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
    specs = keras_model.input_specs(model) or _undeclared_inputs(options)
    batch, described = _batch(specs, options)
    step(f"running {described.samples} samples in inference and training mode")
    return probe_keras_model(path, model, batch, described, scan.content, options.unsafe)


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
    return ContentScan(content, custom, None if unsafe else _refusal(content))


def probe_keras_model(
    path: str,
    model: Any,
    batch: Sequence[np.ndarray],
    data: ProbeData,
    content: tuple[CodeReference, ...],
    unsafe: bool,
) -> ProbeResult:
    """Measure a loaded Keras model on ``batch`` (see ``measure``)."""
    from bncheck.probe import measure

    measured = measure.measure_keras(model, batch)
    return ProbeResult(
        path=path,
        loader="keras",
        content=content,
        unsafe=unsafe,
        data=data,
        modes=measured.modes,
        outputs=measured.outputs,
        layers=measured.layers,
        notes=_data_notes(data.real) + measured.notes,
    )


def _probe_savedmodel(path: str, options: ProbeOptions, step: StepReporter) -> ProbeResult:
    from bncheck.probe import measure, savedmodel

    step("checking the SavedModel graph")
    content = savedmodel.scan_graph(path)
    refused = None if options.unsafe else _refusal(content)
    if refused is not None:
        return ProbeResult(path, None, content, options.unsafe, skipped=refused)
    step("loading with TensorFlow")
    subject = savedmodel.SavedModelSubject(path)
    batch, described = _batch(subject.specs, options)
    step(f"running {described.samples} samples")
    measured = measure.measure_savedmodel(subject, batch)
    notes = [
        "the layers inside a SavedModel are not visible: per-layer measurements (BN014, where "
        "BN013 starts) need the .keras or .h5 file"
    ]
    if subject.can_train:
        notes.append("training mode switches every layer, Dropout included, not BatchNorm alone")
    else:
        notes.append(
            f"{subject.loader}: inference only, so collapse (BN013) and mode divergence (BN015) "
            "cannot be judged"
        )
    return ProbeResult(
        path=path,
        loader=subject.loader,
        content=content,
        unsafe=options.unsafe,
        data=described,
        modes=measured.modes,
        outputs=measured.outputs,
        notes=_data_notes(described.real) + tuple(notes),
    )


def _refusal(content: Sequence[CodeReference]) -> str | None:
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


@functools.lru_cache(maxsize=2)
def _array_source(path: str) -> probe_data.ArraySource:
    return probe_data.ArraySource(path)


def _undeclared_inputs(options: ProbeOptions) -> list[probe_data.InputSpec]:
    """A subclassed model declares no inputs: take their shape from the data or the option."""
    if options.data is not None:
        arrays = list(_array_source(options.data).arrays.values())
        if len(arrays) == 1:
            array = arrays[0]
            dtype = "float32" if array.dtype.kind == "f" else str(array.dtype)
            return [probe_data.InputSpec("input", (None, *array.shape[1:]), dtype)]
    elif set(options.input_shapes) == {None}:
        return [probe_data.InputSpec("input", (None, *options.input_shapes[None]), "float32")]
    raise UsageError(
        "the model declares no inputs (a subclassed model): pass --data with a .npy file "
        "or --input-shape D1,D2,..."
    )


def _batch(
    specs: Sequence[probe_data.InputSpec], options: ProbeOptions
) -> tuple[list[np.ndarray], ProbeData]:
    if options.data is not None:
        arrays = _array_source(options.data).match(specs)
        batch = probe_data.pick_rows(arrays, options.batch_size, options.seed)
        source = options.data
    else:
        batch = probe_data.synthetic_batch(
            specs, options.batch_size, options.seed, options.input_shapes
        )
        source = f"standard normal, seed {options.seed}"
    batch = probe_data.cast_to_inputs(batch, specs)
    return batch, probe_data.describe_batch(batch, specs, options.data is not None, source)


def _data_notes(real: bool) -> tuple[str, ...]:
    if real:
        return ()
    return (
        "synthetic data: staleness (BN014) and mode divergence (BN015) need real data (--data); "
        "collapse (BN013) and batch-dependent inference (BN016) are judged",
    )
