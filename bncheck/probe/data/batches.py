"""The batches a probe runs, whatever runs them: real data capped at ``--samples``, or one
synthetic batch; and what the report notes about them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from bncheck.errors import UsageError
from bncheck.probe import data as probe_data
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import ProbeData

#: Told after each batch of a sweep: the sweep's name and the batches done.
SweepProgress = Callable[[str, int], None]


class BatchPlan:
    """The batches a probe runs: real data (capped at ``--samples``) or one synthetic batch."""

    def __init__(
        self,
        specs: Sequence[probe_data.InputSpec] | None,
        options: ProbeOptions,
        whole: bool = False,
    ) -> None:
        """``whole``: only full batches of ``options.batch_size`` (a model that takes no other
        size); a short last batch is left out."""
        self.options = options
        self.whole = whole
        self.dataset: probe_data.Dataset | None = None
        source = probe_data.chosen_source(options)
        if source is not None:
            self.dataset = probe_data.open_data(source, specs)
            if options.labels_needed_by is not None and not self.dataset.labelled:
                raise UsageError(
                    f"{options.labels_needed_by} needs labels to measure the metric on, and "
                    f"{self.dataset.source} has none: give --labels FILE.npy, an .npz holding "
                    f"'{probe_data.LABELS_KEY}', or a folder of class subfolders"
                )
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
        if self.whole:
            return max(1, count // self.options.batch_size)
        return max(1, -(-count // self.options.batch_size))

    def batches(self) -> Iterator[probe_data.Batch]:
        if self.dataset is None:
            assert self._synthetic is not None
            yield self._synthetic
            return
        yield from self.dataset.batches(
            self.options.batch_size, self.options.seed, self.options.samples, self.whole
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


def sweep_progress(step: StepReporter, source: BatchPlan) -> SweepProgress:
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
