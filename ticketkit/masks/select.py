"""Exact top-K selection without a full sort.

Score-based methods recompute their masks every optimizer step, so selection sits in the hot
path. A full sort (the reference code) costs O(N log N); `torch.kthvalue` on CPU copies the
tensor and runs a generic nth_element, which on a 266k-weight MLP costs more than the whole
training step. Here, on CPU:

1. Bracket the threshold: around the previous step's threshold (it moves little per step, even
   while single scores jump), or, cold, from the order statistics of a fixed random sample
   (Floyd-Rivest style).
2. One pass counts the values above the bracket and extracts those inside it (~1k).
3. Partition only those; the mask is `|s| >= t`.

If the bracket misses (rare), widen and retry, falling back to a full partition. The result is
always exact: `count(a > t) < K <= count(a >= t)`. Ties at the threshold are broken by index
(lowest first), so the kept count is exactly K. With the compiled kernels (`kernels.py`), steps
1-3 and the mask (with its count and alpha's sum) are two passes in one call (`top_abs`), and
a step whose threshold is still among the last band's values takes only those and the mask
pass (the count proves it exact); without them, the bracket runs as vectorised numpy passes.
On other devices `select_on_device`: `topk` for the threshold, ties resolved on the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ticketkit.masks.kernels import Kernels, kernels, usable

_SMALL = 16384  # below this size a plain partition is already fast
_SAMPLE = 8192
_BAND = 1 << 16  # the kernels' band capacity: a warm band holds ~1k values, a cold one ~8k
_NEAR = 1024  # a band of at most twice this is kept as the next step's candidates
_MAX_BACKOFF = 32


class Selector:
    """Remembers the last threshold of one selection site (a layer, or the whole model)."""

    def __init__(self) -> None:
        self.threshold: float | None = None
        self.halfwidth: float = 0.0
        self._sample_idx: np.ndarray | None = None
        self._above: np.ndarray | None = None  # bool scratch of the input's size, reused
        self._band: np.ndarray | None = None
        self._scratch: torch.Tensor | None = None  # the kernels' band values
        self._where: torch.Tensor | None = None  # ... and their indices
        self._candidates: torch.Tensor | None = None  # the last band's indices
        self._candidates_above = 0  # how many values were above them then
        self._candidates_n = 0  # the size of the tensor they index
        self._backoff = 0  # after the next failed try of the candidates, skip twice this
        self._skip = 0  # steps left before the next try
        self._trying_all = False  # the last warm try partitioned all values (a small layer)

    def top_abs(
        self,
        s: torch.Tensor,
        keep: int,
        out: torch.Tensor,
        scratch: torch.Tensor,
        w: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
        warm: bool = True,
    ) -> bool:
        """Write the float mask of the `keep` largest |s| into `out` (ties by index).

        `scratch` (s's shape) may receive |s|. `w` and the scalar `alpha` (a binary layer's
        scale) come together: the compiled kernels then set alpha = sum(|w| * mask) / keep
        on the way. Returns whether they did (else the caller computes alpha). `warm=False`:
        `top_abs_many` already handled this step's warm try (it missed, or none was due).
        """
        fused = kernels() if self._fusable(s, keep, out, w, alpha) else None
        if fused is None:
            self.select(torch.abs(s, out=scratch).view(-1), keep, out)
            return False
        if warm:
            row = self.warm_row(s, keep, out, w, alpha)
            if row is not None:
                counts, ts = fused.topk_among_rows(row)
                if self.warm_done(counts[0], ts[0], keep):
                    return w is not None
        if s.numel() > _SMALL and self._fused_bracket(fused, s, keep, out, w, alpha):
            return w is not None
        self.select(torch.abs(s, out=scratch).view(-1), keep, out)  # the exact eager path (NaN)
        return False

    @staticmethod
    def _fusable(
        s: torch.Tensor,
        keep: int,
        out: torch.Tensor,
        w: torch.Tensor | None,
        alpha: torch.Tensor | None,
    ) -> bool:
        """Whether the compiled kernels may take this selection (if they are there)."""
        if not 0 < keep < s.numel():
            return False
        if w is None and alpha is None:
            return usable(s, out)
        return w is not None and alpha is not None and usable(s, out, w, alpha)

    def warm_row(
        self,
        s: torch.Tensor,
        keep: int,
        out: torch.Tensor,
        w: torch.Tensor | None,
        alpha: torch.Tensor | None,
    ) -> list[int] | None:
        """This step's warm try as a row of `Kernels.topk_among_rows`, or None if none is due.

        A small layer's try partitions all of it; a large one's, the candidates its last band
        left, unless it is backing off after failed tries (a skipped step counts down the
        backoff). Call `warm_done` with the outcome of a row.
        """
        if not self._fusable(s, keep, out, w, alpha):
            return None
        n, c = s.numel(), self._candidates
        self._trying_all = n <= _SMALL
        if self._trying_all:
            idx, count, need = 0, n, keep
        else:
            need = keep - self._candidates_above
            # the indices go to C unchecked: only candidates taken from a tensor of this size
            if c is None or self._candidates_n != n or not 0 < need <= c.numel():
                return None
            if self._skip > 0:
                self._skip -= 1
                return None
            idx, count = c.data_ptr(), c.numel()
        w_at = w.data_ptr() if w is not None else 0
        alpha_at = alpha.data_ptr() if alpha is not None else 0
        buf = self._values(count).data_ptr()
        return [s.data_ptr(), w_at, out.data_ptr(), n, idx, count, need, keep, buf, alpha_at]

    def warm_done(self, count: int, t: float, keep: int) -> bool:
        """Record a warm try's outcome (from `warm_row`); True if it gave the exact mask."""
        if self._trying_all:  # a small layer: a full partition, exact unless NaN
            return count == keep
        if count == keep:
            self.threshold, self._backoff = t, 0  # t: the next bracket's centre
            return True
        # early in training scores jump across the threshold from anywhere: skip the next
        # 1, 2, 4 ... steps' tries, each failed try costs a pass
        self._backoff = self._skip = min(2 * self._backoff or 1, _MAX_BACKOFF)
        return False

    def _fused_bracket(
        self,
        fused: Kernels,
        s: torch.Tensor,
        keep: int,
        out: torch.Tensor,
        w: torch.Tensor | None,
        alpha: torch.Tensor | None,
    ) -> bool:
        """Brackets around the threshold; False leaves the rest (NaN) to the eager path."""
        flat = s.detach().numpy().reshape(-1)
        if self._where is None:
            self._where = torch.empty(_BAND, dtype=torch.int64)
        where = self._where
        for attempt in range(3):
            lo, hi = self._bracket(flat, keep, attempt, signed=True)
            count, t, band, above, _ = fused.topk_bracket(
                s, keep, out, w, lo, hi, self._values(_BAND), where, alpha
            )
            if count == keep:
                self._adapt(t, band, lo, hi)
                near = band <= 2 * _NEAR  # a warm band: keep it as the next candidates
                self._candidates = where[:band].clone() if near else None
                self._candidates_above, self._candidates_n = above, s.numel()
                return True
            if count != -2:  # not a miss: NaN scores, left to the eager path
                break
            self.threshold = None  # the bracket missed: go cold, and wider
        return False

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
        if not a.is_cpu:
            flat.copy_(select_on_device(a, keep))
            return
        t, n_ge = self._threshold_cpu(a.detach().numpy(), keep)
        if n_ge != keep:
            flat.copy_(_break_ties(a, t, keep))
        elif out.dtype == torch.bool:
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
    def _values(self, n: int) -> torch.Tensor:
        """float32 scratch of at least n values for the kernels, reused."""
        if self._scratch is None or self._scratch.numel() < n:
            self._scratch = torch.empty(n)
        return self._scratch

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

    def _bracket(
        self, a: np.ndarray, keep: int, attempt: int, signed: bool = False
    ) -> tuple[float, float]:
        """A bracket [lo, hi] likely to hold the keep-th largest of a (of |a| if `signed`)."""
        if self.threshold is not None and attempt == 0:
            return self.threshold - self.halfwidth, self.threshold + self.halfwidth
        n = a.size
        if self._sample_idx is None or self._sample_idx.size != min(_SAMPLE, n):
            rng = np.random.default_rng(12345)
            self._sample_idx = rng.choice(n, size=min(_SAMPLE, n), replace=False)
        sample = np.abs(a[self._sample_idx]) if signed else a[self._sample_idx]
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


_Tensor = torch.Tensor | None
Job = tuple[Selector, torch.Tensor, int, torch.Tensor, torch.Tensor, _Tensor, _Tensor]
"""A selector and the arguments of its `top_abs`."""


def top_abs_many(jobs: list[Job]) -> list[bool]:
    """`Selector.top_abs` of several layers, with their warm tries in one compiled call.

    At small learning rates (late in a schedule, fine-grained score training) every layer's
    threshold is among its last band's values, and a step is one warm try per layer; made
    together, the step crosses from Python to C once instead of once per layer, which on a
    small model is a good part of the step's selection cost. Tries that miss, and layers with
    none due, go on in `top_abs`. Returns `top_abs`'s result for each job. One job per
    selector: a selector's scratch holds its try's values until the call.
    """
    fused = kernels()
    if fused is None:
        return [job[0].top_abs(*job[1:]) for job in jobs]
    rows: list[int] = []
    tried: list[int] = []
    for i, (selector, s, keep, out, _, w, alpha) in enumerate(jobs):
        row = selector.warm_row(s, keep, out, w, alpha)
        if row is not None:
            rows += row
            tried.append(i)
    done = [False] * len(jobs)
    if rows:
        counts, ts = fused.topk_among_rows(rows)
        for i, count, t in zip(tried, counts, ts, strict=True):
            done[i] = jobs[i][0].warm_done(count, t, jobs[i][2])
    return [
        job[5] is not None if done[i] else job[0].top_abs(*job[1:], warm=False)
        for i, job in enumerate(jobs)
    ]


def select_on_device(a: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of the `keep` largest entries of flat `a` (ties by index), for accelerators:
    no host synchronisation, so the step's kernels stay queued behind it.

    The threshold comes from `topk` of the smaller side: CUDA's `kthvalue` runs one block per
    slice (reported ~20x slower than a sort on a large flat tensor, pytorch/pytorch#75599; not
    measured here), and counting the ties on the host would stall the GPU once a layer. The ties at t are taken
    lowest index first by a running count, all on the device.
    """
    n = a.numel()
    if keep <= n - keep + 1:
        t = a.topk(keep, sorted=False).values.min()
    else:
        t = a.topk(n - keep + 1, largest=False, sorted=False).values.max()
    above = a > t
    missing = keep - above.sum()
    ties = a == t
    return above | (ties & (ties.cumsum(0) <= missing))


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
