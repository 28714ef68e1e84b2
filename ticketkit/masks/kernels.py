"""Fused CPU kernels for score-based masks, compiled on first use; eager PyTorch otherwise.

A biprop step on a small model is bound by elementwise passes over the weights, not by
arithmetic: eager PyTorch and numpy make about a dozen per layer and step (|s|, the bracket's
comparisons, count and extraction, the mask, alpha's dot product, then sign(s), * W and * g in
the backward). `kernels.c` makes the exact top-k mask in two passes (a bracket scan, then the
mask with its count and sum(|W| m) for alpha) and the score gradient in one, on the OpenMP
threads PyTorch already has.

The C file is compiled once per machine with the system C compiler (`cc`, or `$CC`) into
`$TICKETKIT_CACHE` (default `~/.cache/ticketkit`), atomically, so concurrent `torchrun`
workers are safe. Without a compiler, or with `TICKETKIT_KERNELS=0`, every caller falls back
to the eager path, which computes the same masks and gradients.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import struct
import subprocess
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

import torch

_BASE = ("-O3", "-fPIC", "-shared", "-fno-math-errno")
_FLAGS = (
    (*_BASE, "-fopenmp", "-DTK_CLONES"),  # AVX2 and baseline clones, picked at load (x86-64)
    (*_BASE, "-fopenmp"),  # no ifunc support (not glibc/ELF)
    (*_BASE, "-fopenmp-simd"),  # no OpenMP: one thread
    _BASE,
)


class Kernels:
    """The compiled library behind thin tensor-level wrappers (callers check `usable`)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._bracket = lib.tk_topk_bracket
        self._bracket.restype = ctypes.c_int64
        self._bracket.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2
        self._bracket.argtypes += [ctypes.c_float] * 2 + [ctypes.c_void_p] * 2
        self._bracket.argtypes += [ctypes.c_int64] + [ctypes.c_void_p] * 5
        self._among_rows = lib.tk_topk_among_rows
        self._among_rows.restype = ctypes.c_int64
        self._among_rows.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 3
        self._grad = lib.tk_score_grad_rows
        self._binary = lib.tk_binary_weight_rows
        for rows in (self._grad, self._binary):
            rows.restype = None
            rows.argtypes = [ctypes.c_int64, ctypes.c_void_p]

    def topk_bracket(
        self,
        s: torch.Tensor,
        keep: int,
        out: torch.Tensor,
        w: torch.Tensor | None,
        lo: float,
        hi: float,
        buf: torch.Tensor,
        where: torch.Tensor,
        alpha: torch.Tensor | None = None,
    ) -> tuple[int, float, int, int, float | None]:
        """The top-`keep` mask of |s| into out, if its threshold lies in [lo, hi].

        One scan counts |s| > hi and copies the band [lo, hi] into `buf` (float32) and its
        indices into `where` (int64; both of the band's capacity); a partition of the band gives
        t; one pass writes the mask. Returns (count, t, band size, count above the band,
        sum(|w| * out) if w given); count is keep (ties at t broken by index), or -2 if the
        bracket missed or the band overflowed. `alpha` as in `topk_among_rows`.
        """
        t, band, above, total = (
            ctypes.c_float(),
            ctypes.c_int64(),
            ctypes.c_int64(),
            ctypes.c_double(),
        )
        count = self._bracket(
            s.data_ptr(),
            w.data_ptr() if w is not None else None,
            out.data_ptr(),
            s.numel(),
            keep,
            lo,
            hi,
            buf.data_ptr(),
            where.data_ptr(),
            min(buf.numel(), where.numel()),
            ctypes.byref(t),
            ctypes.byref(band),
            ctypes.byref(above),
            ctypes.byref(total),
            alpha.data_ptr() if alpha is not None else None,
        )
        if count == -1:
            raise MemoryError("tk_topk_bracket")
        return (
            int(count),
            t.value,
            band.value,
            above.value,
            (total.value if w is not None else None),
        )

    def topk_among_rows(self, rows: list[int]) -> tuple[list[int], list[float]]:
        """The masks of the `keep` largest |s| of several layers, where t is their threshold.

        Per layer ten integers (s, w, out, n, idx, count, need, keep, buf, alpha; tensors as
        `data_ptr()`, absent ones 0), as `Selector.warm_row` makes them: t is the need-th
        largest of |s[idx]| (of all of s without idx; need = keep then), `buf` float32 scratch
        of `count` values (len(idx), or n), idx int64, 1 <= need <= count. One mask pass
        writes out = |s| >= t. Returns (counts, thresholds), one each per layer: a count is
        keep if t was the exact threshold (ties at t then broken by index), else count(|s| >=
        t). An exact layer with w and alpha also gets the float32 scalar alpha = sum(|w| *
        out) / keep. Callers check `usable` and sizes (this runs every step, hence no checks).
        """
        layers = len(rows) // 10
        counts, ts = (ctypes.c_int64 * layers)(), (ctypes.c_float * layers)()
        if self._among_rows(layers, _array(rows), counts, ts) < 0:
            raise MemoryError("tk_topk_among_rows")
        return list(counts), list(ts)

    def score_grads(
        self,
        gs: list[torch.Tensor],
        ws: list[torch.Tensor],
        ss: list[torch.Tensor],
        decays: list[float] | None = None,
    ) -> list[torch.Tensor]:
        """g * w * sign(s) + decay * s for every layer in one call (w and s `usable`: the
        caller checks; `decays` default to 0)."""
        gs = [g.contiguous() for g in gs]
        outs = [torch.empty_like(g) for g in gs]
        rows = []
        for g, w, s, out, decay in zip(gs, ws, ss, outs, decays or [0.0] * len(gs), strict=True):
            bits = struct.unpack("<I", struct.pack("<f", decay))[0]  # the float32's bits
            rows += (g.data_ptr(), w.data_ptr(), s.data_ptr(), out.data_ptr(), g.numel(), bits)
        self._grad(len(outs), _array(rows))
        return outs

    def binary_weights(
        self, ws: list[torch.Tensor], ms: list[torch.Tensor], alphas: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """alpha * sign(w) * m for every layer in one call; all `usable`, alphas scalars.

        alpha is read through its pointer: `.item()` would be one more tensor call per layer.
        """
        outs = [torch.empty_like(w) for w in ws]
        rows = []
        for w, m, out, alpha in zip(ws, ms, outs, alphas, strict=True):
            rows += (w.data_ptr(), m.data_ptr(), out.data_ptr(), w.numel(), alpha.data_ptr())
        self._binary(len(outs), _array(rows))
        return outs


def _array(values: list[int]) -> ctypes.Array:
    """A fresh C array of the kernels' row arguments (a shared one would not be thread-safe:
    ctypes releases the GIL during a call)."""
    return (ctypes.c_uint64 * len(values))(*values)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: contiguous float32 on the CPU."""
    for t in tensors:
        if not (t.is_cpu and t.dtype == torch.float32 and t.is_contiguous()):
            return False
    return True


@cache
def kernels() -> Kernels | None:
    """The compiled kernels, or None (disabled, or no working C compiler)."""
    if os.environ.get("TICKETKIT_KERNELS", "1") == "0":
        return None
    source = resources.files("ticketkit.masks").joinpath("kernels.c").read_bytes()
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not found:
        return None
    compiler = shlex.split(found)  # CC may carry a launcher or flags ("ccache gcc")
    cache_dir = Path(os.environ.get("TICKETKIT_CACHE") or Path.home() / ".cache" / "ticketkit")
    builds = []
    for flags in _FLAGS:
        key = " ".join((*compiler, *flags, platform.machine())).encode()
        digest = hashlib.sha256(source + key).hexdigest()[:16]
        builds.append((flags, cache_dir / f"kernels-{digest}.so"))
    # a library built earlier first (also one of the fallback flag sets), then build in order
    for flags, path in [b for b in builds if b[1].exists()] + builds:
        if path.exists() or _compile(compiler, flags, source, path):
            try:
                return Kernels(ctypes.CDLL(str(path)))
            except (OSError, AttributeError):  # not loadable, or not our library
                continue
    return None


def _compile(compiler: list[str], flags: tuple[str, ...], source: bytes, path: Path) -> bool:
    """Compile into a temporary file and rename it into place; False on any failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            src, lib = Path(tmp) / "kernels.c", Path(tmp) / path.name
            src.write_bytes(source)
            done = subprocess.run(
                [*compiler, *flags, str(src), "-o", str(lib), "-lm"],
                capture_output=True,
                timeout=120,
            )
            if done.returncode != 0:
                return False
            os.replace(lib, path)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
