"""Exact top-K selection without a full sort.

Score-based methods recompute their masks every optimizer step, so selection sits in the hot
path. A full sort (the reference code) costs O(N log N); `torch.kthvalue` on CPU copies the
tensor and runs a generic nth_element, which on a 266k-weight MLP costs more than the whole
training step. Here, on CPU:

1. Warm: scores move little per step, so the K-th largest value is usually still among the
   ~1k candidates that were near the threshold last time, with the same number of values
   above them. Partition the candidates, then mask with one pass: if the mask holds exactly K
   values it is the exact top-K, whatever moved (everything kept is >= t, everything else is
   below). With the fused kernel (`kernels.py`) that pass also yields the count and alpha's sum.
2. Otherwise bracket the threshold: around the previous one, or, cold, from the order
   statistics of a fixed random sample (Floyd-Rivest style). One vectorised pass counts the
   values above the bracket and extracts those inside it (the next candidates); partition
   only those. If the bracket misses (rare), widen and retry, falling back to a full partition.

The result is always exact: `count(a > t) < K <= count(a >= t)`. On other devices
`torch.kthvalue` is used. Ties at the threshold are broken by index (lowest first), so the
kept count is exactly K.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ticketkit.core.kernels import kernels, usable

_SMALL = 16384  # below this size a plain partition is already fast
_SAMPLE = 8192
_NEAR = 512  # candidates kept on either side of the threshold for the next step
_MAX_BACKOFF = 32


class Selector:
    """Remembers the last threshold of one selection site (a layer, or the whole model)."""

    def __init__(self) -> None:
        self.threshold: float | None = None
        self.halfwidth: float = 0.0
        self._sample_idx: np.ndarray | None = None
        self._above: np.ndarray | None = None  # bool scratch of the input's size, reused
        self._band: np.ndarray | None = None
        self._candidates: np.ndarray | None = None  # indices near the last threshold
        self._candidates_above = 0  # how many values were above them then
        self._scratch: np.ndarray | None = None
        self._backoff = 0  # steps to skip the candidates after the next failure / 2
        self._skip = 0  # steps left to skip them

    def top_abs(
        self,
        s: torch.Tensor,
        keep: int,
        out: torch.Tensor,
        scratch: torch.Tensor,
        w: torch.Tensor | None = None,
    ) -> float | None:
        """Write the float mask of the `keep` largest |s| into `out` (ties by index).

        `scratch` (s's shape) may receive |s|. Returns sum(|w| * mask) when `w` is given and
        the fused kernel computed it on the way, else None.
        """
        n = s.numel()
        fused = kernels() if 0 < keep < n and usable(s, out) and (w is None or usable(w)) else None
        if fused is None:
            self.select(torch.abs(s, out=scratch).view(-1), keep, out)
            return None
        if n <= _SMALL:
            _, count, total = fused.topk_from(s, keep, out, w, self._buffer(n))
            if count == keep:
                return total
        elif self._try_warm(n, keep):
            need, buf = keep - self._candidates_above, self._buffer(self._candidates.size)
            t, count, total = fused.topk_from(s, need, out, w, buf, self._candidates)
            if self._warm_result(count == keep, t):
                return total
        a = torch.abs(s, out=scratch).view(-1)
        if n <= _SMALL:  # ties at the threshold
            self.select(a, keep, out)
            return None
        t, n_ge = self._threshold_cpu(a.numpy(), keep)
        if n_ge != keep:
            out.view(-1).copy_(_break_ties(a, t, keep))
            return None
        count, total = fused.topk_at(s, t, out, w)
        if count == keep:
            return total
        out.view(-1).copy_(_break_ties(a, t, keep))  # cannot happen: the same comparison
        return None

    def select(self, a: torch.Tensor, keep: int, out: torch.Tensor) -> None:
        """Write the mask of the `keep` largest entries of flat `a` into `out` (ties by index).

        `out` may be float (a mask buffer) or bool, with a.numel() elements.
        """
        n = a.numel()
        if keep >= n or keep <= 0:
            out.fill_(1 if keep >= n else 0)
            return
        flat = out.view(-1)
        if a.is_cpu and n <= _SMALL:  # numpy end to end: per-call overhead dominates here
            self._select_small(a.detach().numpy().reshape(-1), keep, flat)
            return
        if a.is_cpu:
            an = a.detach().numpy()
            if out.dtype != torch.bool and self._try_warm(n, keep):
                t = self._from_candidates(an[self._candidates], keep)
                torch.ge(a, t, out=flat)
                if self._warm_result(_count(flat) == keep, t):
                    return
            t, n_ge = self._threshold_cpu(an, keep)
        else:
            t = a.kthvalue(n - keep + 1).values
            n_ge = int((a >= t).sum())
        if n_ge != keep:
            flat.copy_(_break_ties(a, t, keep))
        elif a.is_cpu and out.dtype == torch.bool:
            np.greater_equal(a.detach().numpy(), t, out=flat.numpy())
        else:
            torch.ge(a, t, out=flat)  # float masks: multithreaded, unlike numpy's casting path

    @staticmethod
    def _select_small(a: np.ndarray, keep: int, out: torch.Tensor) -> None:
        j = a.size - keep
        t = np.partition(a, j)[j]
        flat = out.numpy()
        np.greater_equal(a, t, out=flat)
        if np.count_nonzero(flat) != keep:
            out.copy_(_break_ties(torch.from_numpy(a), float(t), keep))

    def mask(self, a: torch.Tensor, keep: int) -> torch.Tensor:
        """Bool mask of the `keep` largest entries of the flat tensor `a` (ties by index)."""
        out = torch.empty(a.numel(), dtype=torch.bool, device=a.device)
        self.select(a, keep, out)
        return out

    # -- CPU path ------------------------------------------------------------------------------
    def _buffer(self, n: int) -> np.ndarray:
        """float32 scratch of at least n values for the kernels' partition, reused."""
        if self._scratch is None or self._scratch.size < n:
            self._scratch = np.empty(max(n, 2 * _NEAR + 1), dtype=np.float32)
        return self._scratch

    def _try_warm(self, n: int, keep: int) -> bool:
        """Whether to try the candidates: they exist for this size, can hold the K-th value,
        and the last tries did not fail (early in training scores jump across the threshold
        from anywhere, and a failed try costs a pass; after a failure, wait 1, 2, 4... steps)."""
        if self._skip > 0:
            self._skip -= 1
            return False
        c = self._candidates
        return (
            c is not None
            and self._above is not None
            and self._above.size == n
            and 0 < keep - self._candidates_above <= c.size
        )

    def _warm_result(self, exact: bool, t: float) -> bool:
        """Record a try of the candidates; `exact`: its mask held exactly K values."""
        if exact:
            self.threshold, self._backoff = t, 0  # t: the next bracket's centre
        else:
            self._backoff = min(2 * self._backoff or 1, _MAX_BACKOFF)
            self._skip = self._backoff
        return exact

    def _from_candidates(self, values: np.ndarray, keep: int) -> float:
        """The threshold if the K-th largest value is still among the candidates' `values`."""
        j = values.size - (keep - self._candidates_above)
        return float(np.partition(values, j)[j])

    def _threshold_cpu(self, a: np.ndarray, keep: int) -> tuple[float, int]:
        """(t, count(a >= t)) with t the keep-th largest value of a."""
        n = a.size
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
                candidates = np.flatnonzero(band)
                values = a[candidates]
                need = keep - above  # the need-th largest value inside the band
                if need <= values.size:
                    j = values.size - need
                    t = np.partition(values, j)[j]
                    self._adapt(float(t), values.size, lo, hi)
                    self._keep_candidates(candidates, values, j, above)
                    return float(t), above + int(np.count_nonzero(values >= t))
            self.threshold = self._candidates = None  # the bracket missed: go cold, and wider
        t = np.partition(a, n - keep)[n - keep]
        return float(t), int(np.count_nonzero(a >= t))

    def _keep_candidates(
        self, candidates: np.ndarray, values: np.ndarray, j: int, above: int
    ) -> None:
        """Keep the band's `_NEAR` values on either side of rank j as the next candidates.

        A cold bracket can hold thousands of values; partitioning them every step would cost
        more than the bracket pass it saves.
        """
        lo, hi = max(j - _NEAR, 0), min(j + _NEAR, values.size - 1)
        if lo > 0 or hi < values.size - 1:
            near = np.argpartition(values, [r for r in (lo, hi) if 0 < r < values.size - 1])
            candidates, above = candidates[near[lo : hi + 1]], above + values.size - hi - 1
        self._candidates = np.ascontiguousarray(candidates, dtype=np.int64)  # for the kernels
        self._candidates_above = above

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


def _count(mask: torch.Tensor) -> int:
    """Ones in a 0/1 float mask. A float32 sum is exact below 2**24 elements and ~40x faster
    than `count_nonzero` on CPU."""
    return int(mask.sum() if mask.numel() < 2**24 else mask.sum(dtype=torch.float64))


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
