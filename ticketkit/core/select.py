"""Exact top-K selection without a full sort.

Score-based methods recompute their masks every optimizer step, so selection sits in the hot
path. A full sort (the reference code) costs O(N log N); `torch.kthvalue` on CPU copies the
tensor and runs a generic nth_element, which on a 266k-weight MLP costs more than the whole
training step. Here, on CPU:

1. Bracket the threshold: around the previous step's threshold (scores move little per step),
   or, cold, from the order statistics of a fixed random sample (Floyd-Rivest style).
2. One vectorised pass counts the values above the bracket and extracts those inside it.
3. Partition only the few values inside the bracket.

If the bracket misses (rare), widen and retry, falling back to a full partition. The result is
always exact: `count(a > t) < K <= count(a >= t)`. On other devices `torch.kthvalue` is used.
Ties at the threshold are broken by index (lowest first), so the kept count is exactly K.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_SMALL = 16384  # below this size a plain partition is already fast
_SAMPLE = 8192


class Selector:
    """Remembers the last threshold of one selection site (a layer, or the whole model)."""

    def __init__(self) -> None:
        self.threshold: float | None = None
        self.halfwidth: float = 0.0
        self._sample_idx: np.ndarray | None = None
        self._above: np.ndarray | None = None  # bool scratch of the input's size, reused
        self._band: np.ndarray | None = None

    def select(self, a: torch.Tensor, keep: int, out: torch.Tensor) -> None:
        """Write the mask of the `keep` largest entries of flat `a` into `out` (ties by index).

        `out` may be float (a mask buffer) or bool, with a.numel() elements.
        """
        n = a.numel()
        if keep >= n or keep <= 0:
            out.fill_(1 if keep >= n else 0)
            return
        flat = out.view(-1)
        if a.is_cpu:
            t, n_ge = self._threshold_cpu(a.detach().numpy(), keep)
        else:
            t = a.kthvalue(n - keep + 1).values
            n_ge = int((a >= t).sum())
        if n_ge != keep:
            flat.copy_(_break_ties(a, t, keep))
        elif a.is_cpu and out.dtype == torch.bool:
            np.greater_equal(a.detach().numpy(), t, out=flat.numpy())
        else:
            torch.ge(a, t, out=flat)  # float masks: multithreaded, unlike numpy's casting path

    def mask(self, a: torch.Tensor, keep: int) -> torch.Tensor:
        """Bool mask of the `keep` largest entries of the flat tensor `a` (ties by index)."""
        out = torch.empty(a.numel(), dtype=torch.bool, device=a.device)
        self.select(a, keep, out)
        return out

    # -- CPU path ------------------------------------------------------------------------------
    def _threshold_cpu(self, a: np.ndarray, keep: int) -> tuple[float, int]:
        """(t, count(a >= t)) with t the keep-th largest value of a."""
        n = a.size
        if n <= _SMALL:
            t = np.partition(a, n - keep)[n - keep]
            return float(t), int(np.count_nonzero(a >= t))
        if self._above is None or self._above.size != n:
            self._above, self._band = np.empty(n, dtype=bool), np.empty(n, dtype=bool)
        above_hi, band = self._above, self._band
        for attempt in range(3):
            lo, hi = self._bracket(a, keep, attempt)
            np.greater(a, hi, out=above_hi)
            above = int(np.count_nonzero(above_hi))
            if above < keep:
                np.greater_equal(a, lo, out=band)
                np.logical_xor(band, above_hi, out=band)  # lo <= a <= hi
                values = a[band]
                need = keep - above  # the need-th largest value inside the band
                if need <= values.size:
                    j = values.size - need
                    values = np.partition(values, j)
                    t = values[j]
                    self._adapt(float(t), values.size, lo, hi)
                    return float(t), above + int(np.count_nonzero(values >= t))
            self.threshold = None  # the bracket missed: go cold, and wider
        t = np.partition(a, n - keep)[n - keep]
        return float(t), int(np.count_nonzero(a >= t))

    def _bracket(self, a: np.ndarray, keep: int, attempt: int) -> tuple[float, float]:
        if self.threshold is not None and attempt == 0:
            return self.threshold - self.halfwidth, self.threshold + self.halfwidth
        n = a.size
        if self._sample_idx is None or self._sample_idx.size != min(_SAMPLE, n):
            rng = np.random.default_rng(12345)
            self._sample_idx = rng.choice(n, size=min(_SAMPLE, n), replace=False)
        sample = a[self._sample_idx]
        m = sample.size
        q = (n - keep) / n  # fraction below the threshold
        pos = q * m
        margin = (3.0 + 3.0 * attempt) * math.sqrt(m * q * (1 - q)) + 4
        lo_i, hi_i = int(pos - margin), int(pos + margin)
        picks = [i for i in (lo_i, hi_i) if 0 <= i < m]
        part = np.partition(sample, picks) if picks else sample
        lo = float(part[lo_i]) if lo_i >= 0 else -math.inf
        hi = float(part[hi_i]) if hi_i < m else math.inf
        return lo, hi

    def _adapt(self, t: float, band_size: int, lo: float, hi: float) -> None:
        """Centre the next bracket on t, wide enough for ~1k values or twice the last move."""
        width = hi - lo
        moved = abs(t - self.threshold) if self.threshold is not None else 0.0
        if math.isfinite(width) and width > 0 and band_size > 0:
            per_value = width / band_size
            self.halfwidth = max(512 * per_value, 2.0 * moved, 1e-12)
            self.threshold = t
        else:
            self.threshold = None


def _break_ties(a: torch.Tensor, t: torch.Tensor | float, keep: int) -> torch.Tensor:
    """Keep everything above t and the lowest-index entries equal to t, `keep` in all."""
    mask = a > t
    missing = keep - int(mask.sum())
    ties = torch.nonzero(a == t).flatten()[:missing]
    mask[ties] = True
    return mask


def kept_count(n: int, k: float) -> int:
    """Weights kept out of n at keep-fraction k: N - floor((1-k) N), the references' rounding."""
    return n - math.floor((1 - k) * n)
