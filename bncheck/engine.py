"""The runner: read each input, apply the enabled rules, stamp their problems into findings.

Static rules judge each layer of the description, model rules the description as a whole,
checkpoint rules a checkpoint's variable groups. When a probe is asked for, the model is also run
(``bncheck.probe``) and the probe rules judge what it measured.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, overload

from bncheck import verdict
from bncheck.errors import ModelReadError, UsageError
from bncheck.findings import Finding, ModelResult, Problem, Report
from bncheck.isolation import Limits, read_all, read_contained
from bncheck.model import BNLayer, CheckpointContents, ModelDescription, with_loaded_settings
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.readers import detect, read_checkpoint, read_model
from bncheck.rules import RULES, Needs
from bncheck.settings import Settings

if TYPE_CHECKING:
    from bncheck.probe.results import ProbeResult

NO_MODELS = (
    "directory is neither a SavedModel (no saved_model.pb) nor a checkpoint (no checkpoint or "
    ".index file), and holds no model files (.keras archives, HDF5 files)"
)


def inspect_paths(
    paths: Iterable[str],
    settings: Settings,
    jobs: int = 1,
    probe: ProbeOptions | None = None,
    step: StepReporter | None = None,
    limits: Limits | None = None,
) -> Report:
    """Inspect every path, searching folders for models, and probe each model when asked; an
    unreadable input becomes a result with an error. With ``jobs`` > 1, static inspection runs in
    that many processes (each file is read in a worker process either way, where a crash or a
    hang fails only that file, ``limits`` saying how long and how much memory it may take); the
    report's order is the same either way: inputs as given, each folder's models sorted."""
    inputs: list[str | ModelResult] = []
    for path in paths:
        if not os.path.isdir(path) or detect.is_model_directory(path):
            inputs.append(path)
        else:
            try:
                inputs += detect.find_models(path) or [ModelResult(path, None, error=NO_MODELS)]
            except ModelReadError as exc:
                inputs.append(ModelResult(path, None, error=str(exc)))
    models = [i for i in inputs if isinstance(i, str)]
    results = iter(_inspect_all(models, settings, jobs, probe, step, limits))
    found = tuple(i if isinstance(i, ModelResult) else next(results) for i in inputs)
    return Report(models=found, fail_on=settings.fail_on)


def _inspect_all(
    paths: list[str],
    settings: Settings,
    jobs: int,
    probe: ProbeOptions | None,
    step: StepReporter | None,
    limits: Limits | None = None,
) -> list[ModelResult]:
    # Probes run here, one at a time: each loads a model with TensorFlow, which already uses
    # every core, and reports progress to this process's terminal.
    if probe is not None:
        return _probe_each(paths, settings, probe, step, limits)
    # Each file is read in a worker process (processes, not threads: h5py serialises all HDF5
    # calls behind one global lock), where a crash fails only that file.
    outcomes = read_all(read_model, paths, jobs, limits)
    return [
        ModelResult(path=path, format=None, error=str(outcome))
        if isinstance(outcome, ModelReadError)
        else judged(path, outcome, settings)
        for path, outcome in zip(paths, outcomes, strict=True)
    ]


def _probe_each(
    paths: list[str],
    settings: Settings,
    probe: ProbeOptions,
    step: StepReporter | None,
    limits: Limits | None,
) -> list[ModelResult]:
    """``inspect_path`` of each model with the probe. Options that fit some models and not
    another (an ``--input-shape`` that a TorchScript archive needs and a Keras model in the same
    folder refuses) fail that model alone, its static report kept; a mistake that fits no model
    stays the usage error it is."""
    results: list[ModelResult] = []
    misfits: list[UsageError] = []
    for path in paths:
        try:
            results.append(inspect_path(path, settings, probe, step, limits))
        except UsageError as exc:
            misfits.append(exc)
            unprobed = inspect_path(path, settings, limits=limits)
            results.append(replace(unprobed, error=f"probe: {exc}"))
    if misfits and len(misfits) == len(paths):
        raise misfits[0]
    return results


def inspect_path(
    path: str,
    settings: Settings,
    probe: ProbeOptions | None = None,
    step: StepReporter | None = None,
    limits: Limits | None = None,
) -> ModelResult:
    """Read and judge one model; with ``probe``, also run it and judge the measurements."""
    try:
        description = read_contained(read_model, path, limits)
    except ModelReadError as exc:
        return ModelResult(path=path, format=None, error=str(exc))
    # The probe loads the file with its framework in a worker process under time and memory
    # limits: only a file the static reading survived gets that far, and its report stays
    # whatever the probe does.
    result = judged(path, description, settings)
    if probe is None:
        return result
    from bncheck.probe.runner import run_probe_contained

    show = step or (lambda _: None)
    untouched = {
        layer.path: bool(verdict.statistics_never_moved(layer)) for layer in description.layers
    }
    try:
        measured = run_probe_contained(path, probe, lambda text: show(f"{path}: {text}"), untouched)
    except ModelReadError as exc:
        return replace(result, error=f"probe: {exc}")
    if probe.architecture is not None and measured.ran:
        # The weights ran in the architecture's model: the static rules judge them with its
        # layer paths, momentum, epsilon and trainable flags, which a weights file lacks.
        from bncheck.probe.runtimes.architecture import paired, read_architecture

        try:
            description = paired(description, read_architecture(probe.architecture))
        except ModelReadError as exc:
            return replace(result, error=f"--architecture: {exc}")
        result = judged(path, description, settings)
    if measured.loader == "keras":
        loaded = {
            layer.path: (layer.momentum, layer.epsilon)
            for layer in measured.layers
            if layer.momentum is not None
        }
        filled = with_loaded_settings(description, loaded)
        if filled is not description:
            result = judged(path, filled, settings)
    # Measurement settles the static suspicion: one finding per layer (``bncheck.verdict``).
    # Probe rules speak Keras's words; a PyTorch or ONNX model's report speaks its own.
    words = description.vocabulary
    spoken = [
        replace(finding, message=words.translate(finding.message))
        for finding in probe_findings(measured, settings)
    ]
    measured_findings = result.findings + tuple(spoken)
    findings = verdict.settle(measured_findings, measured, settings)
    return replace(result, findings=tuple(findings), probe=measured)


def check_checkpoint(
    path: str, model_path: str | None, settings: Settings, limits: Limits | None = None
) -> Report:
    """Check a checkpoint's BatchNorm variables, against the BatchNorm layers of ``model_path``
    when given. An unreadable checkpoint or model becomes the report's only result."""
    from bncheck.matching import match_layers

    try:
        description = read_contained(read_checkpoint, path, limits)
        contents = description.checkpoint
        if model_path is not None and contents is not None:
            try:
                model = read_contained(read_model, model_path, limits)
            except ModelReadError as exc:
                failed = ModelResult(path=model_path, format=None, error=str(exc))
                return Report(models=(failed,), fail_on=settings.fail_on)
            matched = match_layers(contents, model_path, model.layers)
            description = replace(description, checkpoint=matched)
    except ModelReadError as exc:
        failed = ModelResult(path=path, format=None, error=str(exc))
        return Report(models=(failed,), fail_on=settings.fail_on)
    return Report(models=(judged(path, description, settings),), fail_on=settings.fail_on)


def judged(path: str, description: ModelDescription, settings: Settings) -> ModelResult:
    """A description with the findings of every static, model and checkpoint rule."""
    findings = static_findings(description, settings) + checkpoint_findings(description, settings)
    return ModelResult(
        path=path, format=description.format, description=description, findings=tuple(findings)
    )


def static_findings(description: ModelDescription, settings: Settings) -> list[Finding]:
    """Every enabled static rule over every layer, in rule order then layer order, then every
    ``model`` rule over the description as a whole."""
    return findings_for("static", description.layers, settings) + findings_for(
        "model", [description], settings
    )


def checkpoint_findings(description: ModelDescription, settings: Settings) -> list[Finding]:
    """Every enabled checkpoint rule over a checkpoint's or SavedModel's variable groups."""
    contents = description.checkpoint
    return [] if contents is None else findings_for("checkpoint", [contents], settings)


def probe_findings(result: ProbeResult, settings: Settings) -> list[Finding]:
    """Every enabled probe rule over one model's probe result, in rule order."""
    return findings_for("probe", [result], settings)


@overload
def findings_for(
    needs: Literal["static"], subjects: Iterable[BNLayer], settings: Settings
) -> list[Finding]: ...
@overload
def findings_for(
    needs: Literal["model"], subjects: Iterable[ModelDescription], settings: Settings
) -> list[Finding]: ...
@overload
def findings_for(
    needs: Literal["checkpoint"], subjects: Iterable[CheckpointContents], settings: Settings
) -> list[Finding]: ...
@overload
def findings_for(
    needs: Literal["probe"], subjects: Iterable[ProbeResult], settings: Settings
) -> list[Finding]: ...
def findings_for(needs: Needs, subjects: Iterable[object], settings: Settings) -> list[Finding]:
    """Run every enabled rule that judges this kind of subject over each of them."""
    subjects = list(subjects)
    findings = []
    for rule_id, rule in RULES.items():
        if needs != rule.NEEDS or not settings.enabled(rule_id):
            continue
        options = settings.rules[rule_id].options
        for subject in subjects:
            findings += stamp_all(rule_id, rule.check(subject, options), settings)
    return findings


def stamp_all(rule_id: str, problems: Iterable[Problem], settings: Settings) -> list[Finding]:
    """Stamp a rule's problems, leaving out those on layers configured to ignore the rule."""
    return [
        stamp(rule_id, problem, settings)
        for problem in problems
        if not settings.ignored_at(rule_id, problem.layer)
    ]


def stamp(rule_id: str, problem: Problem, settings: Settings) -> Finding:
    """Turn a rule's problem into a finding with the rule's identity and configured severity."""
    return Finding(
        rule=rule_id,
        name=RULES[rule_id].NAME,
        severity=settings.severity_for(rule_id, problem.escalation),
        layer=problem.layer,
        message=problem.message,
        details=dict(problem.details),
    )
