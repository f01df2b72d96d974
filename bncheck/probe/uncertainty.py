"""How sure a measured change of a metric is: a paired bootstrap over samples.

The probe and recalibrate measure a metric twice on the same samples (with the stored and with
re-estimated statistics). Each sample contributes one value each time (1 or 0 for a correct or
wrong class, its squared error for a regression), so the change is the mean of per-sample
differences, and resampling those differences with replacement shows how much of the change the
particular samples drawn could give on their own. The generator's seed is fixed: the same data
gives the same interval on every run.
"""

from __future__ import annotations

import numpy as np

from bncheck.records import record

#: Resamples of the bootstrap: enough that a 95% interval's ends move by well under a tenth of
#: its width from one seed to another.
RESAMPLES = 2000
#: The confidence of every interval bncheck reports.
LEVEL = 0.95
#: Indices drawn at once, to bound the memory of a bootstrap over many samples.
_CHUNK_VALUES = 1 << 22


@record
class Interval:
    """A 95% interval of a mean change, in the metric's own units."""

    low: float
    high: float
    samples: int
    """The samples the change was measured on."""

    @property
    def excludes_zero(self) -> bool:
        """Whether the data shows a change at all: the whole interval on one side of 0."""
        return self.low > 0.0 or self.high < 0.0


def paired_change(
    before: np.ndarray, after: np.ndarray, seed: int = 0, resamples: int = RESAMPLES
) -> Interval | None:
    """The 95% percentile-bootstrap interval of ``mean(after - before)`` over paired per-sample
    values; ``None`` for fewer than two samples, where there is no spread to resample."""
    before = np.asarray(before, dtype=np.float64).ravel()
    after = np.asarray(after, dtype=np.float64).ravel()
    if before.shape != after.shape:
        raise ValueError(f"unpaired values: {before.size} before, {after.size} after")
    count = before.size
    if count < 2:
        return None
    differences = after - before
    if np.all(differences == differences[0]):
        # Every resample has the same mean; no need to draw them.
        value = float(differences[0])
        return Interval(value, value, count)
    generator = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, _CHUNK_VALUES // count)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        drawn = generator.integers(0, count, size=(stop - start, count))
        means[start:stop] = differences[drawn].mean(axis=1)
    tail = (1.0 - LEVEL) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(low), float(high), count)
