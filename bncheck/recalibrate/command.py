"""``bncheck recalibrate``: re-estimate the statistics, write the repaired model, judge it."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bncheck.engine import probe_findings, static_findings
from bncheck.errors import ModelReadError, UsageError
from bncheck.findings import ModelResult
from bncheck.model import BNLayer, ModelDescription
from bncheck.probe import data as probe_data
from bncheck.probe import safety
from bncheck.probe.results import CodeReference, ProbeData
from bncheck.probe.runner import ContentScan, probe_keras_model, scan_keras_config
from bncheck.progress import Progress
from bncheck.readers import detect, read_model
from bncheck.recalibrate.estimate import Estimate
from bncheck.recalibrate.options import RecalibrateOptions
from bncheck.recalibrate.results import LayerChange, Recalibration, Verdict
from bncheck.recalibrate.write import NewStatistics, write_model

#: The formats recalibration can write back; SavedModels and weights-only files are not.
WRITABLE = ("keras", "h5")


def recalibrate(options: RecalibrateOptions, progress: Progress) -> Recalibration:
    from bncheck.probe import keras_model
    from bncheck.recalibrate.estimate import estimate

    description = _writable_description(options.model)
    output = _output_path(options)
    model, scan = _load(options.model, options, progress)
    source = _DataSource(options, keras_model.input_specs(model))
    probe_batch = source.probe_batch()
    data = probe_data.describe_batch(probe_batch, source.specs, True, options.data)

    progress.step(f"{options.model}: probing before")
    before = _verdict(options.model, model, probe_batch, data, scan.content, options)
    layers = keras_model.batchnorm_layers(model)
    targets, kept = _choose(description, layers, options.include_frozen)
    progress.start_batches(f"{options.model}: recalibrating")
    result = estimate(
        model, targets, source.batches(), lambda done: progress.batch(done, source.total)
    )
    if result.batches == 0:
        raise UsageError(f"--data {options.data} holds no samples")
    progress.step(f"{options.model}: writing {output}")
    write_model(options.model, output, description.format, _updates(description, result))

    repaired_model, _ = _load(output, options, progress)
    progress.step(f"{output}: probing after")
    after = _verdict(output, repaired_model, probe_batch, data, scan.content, options)
    progress.done()
    repaired_description = read_model(output)
    epsilons = {path: float(layer.epsilon) for path, layer in layers}
    kept.update(dict.fromkeys(result.unmeasured, "did not run, kept"))
    return Recalibration(
        model=options.model,
        output=output,
        data=options.data,
        batches=result.batches,
        samples=result.samples,
        layers=tuple(_change(layer, result, kept, epsilons) for layer in description.layers),
        before=before,
        after=after,
        repaired=ModelResult(
            path=output,
            format=repaired_description.format,
            description=repaired_description,
            findings=tuple(static_findings(repaired_description, options.settings))
            + after.findings,
            probe=after.probe,
        ),
        fail_on=options.settings.fail_on,
    )


def _writable_description(path: str) -> ModelDescription:
    kind = detect.sniff(path)
    if kind in ("pytorch", "safetensors", "onnx"):
        raise ModelReadError(
            f"recalibrate reads and writes .keras and .h5 models; {kind} files are checked by "
            "'bncheck inspect' (and --probe) only"
        )
    description = read_model(path) if kind in ("zip", "hdf5") else None
    if description is None or description.format not in WRITABLE:
        what = kind if description is None else description.format
        raise ModelReadError(
            f"recalibrate reads and writes .keras and .h5 models, not {what} inputs "
            "(load the model in Keras and save it as .keras first)"
        )
    return description


def _load(path: str, options: RecalibrateOptions, progress: Progress) -> tuple[Any, ContentScan]:
    """Check the file for code, then load it with Keras (as the probe does)."""
    from bncheck.probe import keras_model
    from bncheck.probe.backend import import_keras

    progress.step(f"{path}: checking the model for code")
    import_keras()
    config = safety.model_config(path)
    if config is None:
        raise ModelReadError("the file holds no architecture to run")
    scan = scan_keras_config(config, options.unsafe, options.custom_objects)
    if scan.refusal is not None:
        raise UsageError(f"{path}: {scan.refusal}")
    progress.step(f"{path}: loading with Keras")
    return keras_model.load_model(path, options.unsafe, scan.custom_objects), scan


def _updates(description: ModelDescription, result: Estimate) -> dict[str, NewStatistics]:
    by_path = {layer.path: layer for layer in description.layers}
    return {
        path: NewStatistics(
            moving_mean=result.moving_mean[path],
            moving_variance=result.moving_variance[path],
            mean_location=by_path[path].locations["moving_mean"],
            variance_location=by_path[path].locations["moving_variance"],
        )
        for path in result.moving_mean
    }


def _change(
    layer: BNLayer, result: Estimate, kept: dict[str, str], epsilons: dict[str, float]
) -> LayerChange:
    if layer.path not in result.moving_mean:
        return LayerChange(layer.path, kept.get(layer.path, "kept"))
    return LayerChange.measured(
        layer.path,
        (layer.moving_mean, layer.moving_variance),
        (result.moving_mean[layer.path], result.moving_variance[layer.path]),
        epsilons[layer.path],
    )


def _output_path(options: RecalibrateOptions) -> str:
    if options.output is None:
        if not options.in_place:
            raise UsageError("recalibrate needs -o OUT (or --in-place to overwrite MODEL)")
        return options.model
    same = os.path.exists(options.output) and os.path.samefile(options.output, options.model)
    if same and not options.in_place:
        raise UsageError(
            f"refusing to overwrite {options.model} (the model itself); pass --in-place to do so"
        )
    return options.output


def _choose(
    description: ModelDescription, layers: Sequence[tuple[str, Any]], include_frozen: bool
) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """The layers to recalibrate, and why each other one keeps its statistics."""
    in_file = {layer.path: layer for layer in description.layers}
    targets, kept = [], {}
    for path, layer in layers:
        stored = in_file.get(path)
        if stored is None or not {"moving_mean", "moving_variance"} <= set(stored.locations):
            continue
        if stored.trainable is False and not include_frozen:
            kept[path] = "frozen, kept"
            continue
        targets.append((path, layer))
    for path in in_file:
        if path not in kept and path not in {p for p, _ in targets}:
            kept[path] = "not found in the loaded model, kept"
    return targets, kept


def _verdict(
    path: str,
    model: Any,
    batch: Sequence[np.ndarray],
    data: ProbeData,
    content: tuple[CodeReference, ...],
    options: RecalibrateOptions,
) -> Verdict:
    probe = probe_keras_model(path, model, batch, data, content, options.unsafe)
    return Verdict(probe, tuple(probe_findings(probe, options.settings)))


class _DataSource:
    """The data, as an array file or an image folder, batch by batch."""

    def __init__(
        self, options: RecalibrateOptions, specs: list[probe_data.InputSpec] | None
    ) -> None:
        self.options = options
        self.folder: probe_data.ImageFolder | None = None
        self.arrays: list[np.ndarray] = []
        if os.path.isdir(options.data):
            if options.image_size is None:
                raise UsageError(f"--data {options.data} is a folder: pass --image-size H W")
            if specs is None or len(specs) != 1:
                raise UsageError(
                    f"--data {options.data}: image folders feed models with exactly one "
                    "declared input"
                )
            self.specs = specs
            self.folder = probe_data.ImageFolder(
                options.data,
                specs[0],
                options.image_size,
                options.rescale,
                options.batch_size,
                options.seed,
            )
            available = self.folder.batch_count
        else:
            if options.image_size is not None or options.rescale is not None:
                raise UsageError("--image-size and --rescale apply to image folders only")
            source = probe_data.ArraySource(options.data)
            self.specs = specs or _specs_from(source, options.data)
            self.arrays = source.match(self.specs)
            available = math.ceil(len(self.arrays[0]) / options.batch_size)
        self.total = available if options.batches is None else min(available, options.batches)

    def probe_batch(self) -> list[np.ndarray]:
        """The batch the verdicts are measured on, drawn as ``inspect --data`` draws it."""
        if self.folder is not None:
            batch = next(self.folder.batches(limit=1), None)
            if batch is None:
                raise UsageError(f"--data {self.options.data} holds no images")
            return batch
        picked = probe_data.pick_rows(self.arrays, self.options.batch_size, self.options.seed)
        return probe_data.cast_to_inputs(picked, self.specs)

    def batches(self) -> Iterator[list[np.ndarray]]:
        if self.folder is not None:
            yield from self.folder.batches(self.options.batches)
            return
        for batch in probe_data.shuffled_batches(
            self.arrays, self.options.batch_size, self.options.seed, self.options.batches
        ):
            yield probe_data.cast_to_inputs(batch, self.specs)


def _specs_from(source: probe_data.ArraySource, path: str) -> list[probe_data.InputSpec]:
    """A subclassed model declares no inputs: one input shaped like the ``.npy`` array."""
    arrays = list(source.arrays.values())
    if len(arrays) != 1:
        raise UsageError(
            f"--data {path}: the model declares no inputs, so bncheck cannot match the arrays "
            "of an .npz to them; pass a .npy file"
        )
    array = arrays[0]
    dtype = "float32" if array.dtype.kind == "f" else str(array.dtype)
    return [probe_data.InputSpec("input", (None, *array.shape[1:]), dtype)]
