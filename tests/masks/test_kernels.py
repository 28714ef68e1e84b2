"""The fused CPU kernels against the eager PyTorch they replace."""

import ctypes
import math
import os
import shlex
import shutil
import subprocess
import sys
from importlib import resources

import pytest
import torch

from ticketkit.masks import kernels as kernels_module
from ticketkit.masks.kernels import kernels

pytestmark = pytest.mark.skipif(kernels() is None, reason="no C compiler: eager path only")


def _among_row(s, keep, out, w=None, idx=None, need=None, alpha=None):
    """tk_topk_among's row, with its scratch buffer (keep it alive through the call)."""
    buf = torch.empty(s.numel() if idx is None else idx.numel())
    ptr = lambda t: t.data_ptr() if t is not None else 0  # noqa: E731
    row = [ptr(s), ptr(w), ptr(out), s.numel(), ptr(idx), buf.numel(), need or keep, keep]
    return [*row, ptr(buf), ptr(alpha)], buf


def _small(s, keep, w=None, idx=None, need=None):
    """(count, t, sum(|w| m) from alpha when exact and w is given, mask) of one layer."""
    out, alpha = torch.empty_like(s), torch.full((), -1.0)
    row, _buf = _among_row(s, keep, out, w, idx, need, alpha if w is not None else None)
    (count,), (t,) = kernels().topk_among_rows(row)
    total = float(alpha) * keep if w is not None and count == keep else None
    return count, t, total, out


def _bracket(s, keep, lo, hi, w=None, capacity=1 << 16):
    out, buf = torch.empty_like(s), torch.empty(capacity)
    where = torch.empty(capacity, dtype=torch.int64)
    count, t, band, above, total = kernels().topk_bracket(s, keep, out, w, lo, hi, buf, where)
    if count >= 0:  # the band's indices, in memory order, and the count above it
        inside = ((s.abs() >= lo) & (s.abs() <= hi)).nonzero().flatten()
        assert torch.equal(where[:band], inside)
        assert above == int((s.abs() > hi).sum())
    return count, t, band, total, out


def _kth_largest_abs(s, keep):
    return float(s.abs().sort(descending=True).values[keep - 1])


@pytest.mark.parametrize("n", [1, 4095, 4097, 10_000])
def test_topk_among_all_matches_a_sort(n):
    gen = torch.Generator().manual_seed(n)
    s, w = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    keep = max(n // 3, 1)
    count, t, total, out = _small(s, keep, w)
    assert t == _kth_largest_abs(s, keep)
    expected = (s.abs() >= t).float()
    assert torch.equal(out, expected) and count == keep == int(expected.sum())
    reference = float((w.double().abs() * expected.double()).sum())
    assert total == pytest.approx(reference, rel=1e-6)
    assert _small(s, keep)[2] is None  # no weights: no sum


def test_topk_among_candidates_takes_the_threshold_among_them():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(100_000, generator=gen)
    order = s.abs().argsort(descending=True)
    keep = 30_000
    # the candidates: ranks 29,000 .. 30,999, in memory order; 29,000 values are above them
    idx = order[29_000:31_000].sort().values
    count, t, _, out = _small(s, keep, idx=idx, need=keep - 29_000)
    assert t == _kth_largest_abs(s, keep) and count == keep
    assert torch.equal(out.bool(), s.abs() >= t)


@pytest.mark.parametrize("n", [100, 300_000])
def test_topk_bracket_is_exact_when_the_bracket_holds_the_threshold(n):
    gen = torch.Generator().manual_seed(n)
    s, w = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    keep = n // 4
    t_true = _kth_largest_abs(s, keep)
    for lo, hi in ((t_true * 0.99, t_true * 1.01), (0.0, math.inf), (t_true, t_true)):
        count, t, band, total, out = _bracket(s, keep, lo, hi, w, capacity=n)
        assert count == keep and t == t_true, (lo, hi)
        assert band == int(((s.abs() >= lo) & (s.abs() <= hi)).sum())
        assert torch.equal(out, (s.abs() >= t).float())
        reference = float((w.double().abs() * out.double()).sum())
        assert total == pytest.approx(reference, rel=1e-6)


def test_topk_bracket_reports_misses_and_overflow():
    s = torch.randn(50_000, generator=torch.Generator().manual_seed(0))
    t_true = _kth_largest_abs(s, 10_000)
    assert _bracket(s, 10_000, t_true * 1.1, t_true * 1.2)[0] == -2  # threshold below the bracket
    assert _bracket(s, 10_000, t_true * 0.8, t_true * 0.9)[0] == -2  # above it
    assert _bracket(s, 10_000, 0.0, math.inf, capacity=100)[0] == -2  # band > capacity


def test_ties_at_the_threshold_are_broken_by_lowest_index():
    s = torch.tensor([3.0, -1.0, 1.0, 2.0, 1.0])
    w = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    count, t, total, out = _small(s, 3, w)
    assert t == 1.0 and count == 3  # three tied at t: only the first is kept
    assert out.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0] and total == pytest.approx(11.0)


def test_ties_in_the_bracket_and_among_candidates():
    gen = torch.Generator().manual_seed(3)
    s, w = torch.randn(50_000, generator=gen), torch.randn(50_000, generator=gen)
    s[25_000:] = s[:25_000].neg()  # every |s| twice
    keep = 12_345  # odd: the threshold's pair is split
    expected = torch.zeros(50_000)
    expected[(-s.abs()).argsort(stable=True)[:keep]] = 1.0  # ties by lowest index
    reference = float((w.double().abs() * expected.double()).sum())
    t_true = _kth_largest_abs(s, keep)
    count, t, _, total, out = _bracket(s, keep, 0.99 * t_true, 1.01 * t_true, w)
    assert count == keep and t == t_true and torch.equal(out, expected)
    assert total == pytest.approx(reference, rel=1e-6)
    # candidates as the selector keeps them: a band's indices and the count above it
    band = (s.abs() >= 0.99 * t_true) & (s.abs() <= 1.01 * t_true)
    idx, above = band.nonzero().flatten(), int((s.abs() > 1.01 * t_true).sum())
    count, t, total, out = _small(s, keep, w, idx, need=keep - above)
    assert count == keep and t == t_true and torch.equal(out, expected)
    assert total == pytest.approx(reference, rel=1e-6)
    count, t, *_ = _small(s, keep, w, idx, need=keep - above - 40)  # a stale count above
    assert t > t_true and count == int((s.abs() >= t).sum()) < keep


def test_kernels_are_deterministic_across_thread_counts():
    gen = torch.Generator().manual_seed(0)
    s, w = torch.randn(500_000, generator=gen), torch.randn(500_000, generator=gen)
    t_true = _kth_largest_abs(s, 123_456)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_bracket(s, 123_456, 0.9 * t_true, 1.1 * t_true, w))
    finally:
        torch.set_num_threads(threads)
    (*first, m1), (*second, m2) = results
    assert first[0] == 123_456 and first == second and torch.equal(m1, m2)


def test_every_flag_set_gives_the_same_results(tmp_path):
    """The AVX2/baseline clones, the OpenMP-less and the plain builds agree."""
    source = resources.files("ticketkit.masks").joinpath("kernels.c").read_bytes()
    compiler = shlex.split(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
    gen = torch.Generator().manual_seed(4)
    s, w, g = (torch.randn(300_000, generator=gen) for _ in range(3))
    t_true = _kth_largest_abs(s, 100_000)
    results = []
    for i, flags in enumerate(kernels_module._FLAGS):
        path = tmp_path / f"k{i}.so"
        assert kernels_module._compile(compiler, flags, source, path), flags
        built = kernels_module.Kernels(ctypes.CDLL(str(path)))
        out, buf = torch.empty_like(s), torch.empty(1 << 16)
        where = torch.empty(1 << 16, dtype=torch.int64)
        count, t, band, above, total = built.topk_bracket(
            s, 100_000, out, w, 0.95 * t_true, 1.05 * t_true, buf, where
        )
        (binary,) = built.binary_weights([w], [out], [torch.tensor(0.25)])
        (grad,) = built.score_grads([g], [w], [s], [1e-4])
        results.append((count, t, band, above, total, out, grad, binary))
    first = results[0]
    for other in results[1:]:
        assert other[:4] == first[:4] and other[4] == pytest.approx(first[4], rel=1e-6)
        assert all(torch.equal(a, b) for a, b in zip(other[5:], first[5:], strict=True))


def test_score_grad_is_bitwise_the_eager_formula():
    gen = torch.Generator().manual_seed(1)
    g, w, s = (torch.randn(70_000, generator=gen) for _ in range(3))
    s[:10] = 0.0  # sign(0) = 0, as torch.sign
    # a non-contiguous gradient is made contiguous first; layers of any size in one call
    g2 = torch.randn(20, 30, generator=gen).t()
    w2, s2 = torch.randn(30, 20, generator=gen), torch.randn(30, 20, generator=gen)
    fused, fused2 = kernels().score_grads([g, g2], [w, w2], [s, s2])
    assert torch.equal(fused, torch.sign(s).mul_(w).mul_(g))
    assert torch.equal(fused2, torch.sign(s2) * w2 * g2)
    # a folded weight decay per layer (Sparsifier.fold_weight_decay): + decay * s
    decayed, plain = kernels().score_grads([g, g2], [w, w2], [s, s2], [1e-3, 0.0])
    torch.testing.assert_close(decayed, torch.sign(s) * w * g + 1e-3 * s)
    assert torch.equal(plain, fused2)
    s[5] = float("inf")  # no decay: an infinite score stays out of the arithmetic
    assert not kernels().score_grads([g], [w], [s], [0.0])[0][5].isnan()


def test_binary_weight_is_bitwise_the_eager_formula():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(50_000, generator=gen)
    w[:10] = 0.0  # sign(0) = 0
    m = (torch.rand(50_000, generator=gen) < 0.3).float()
    alpha = torch.tensor(0.0371)
    w2, m2, alpha2 = w[:300].clone(), m[:300].clone(), torch.tensor(2.5)
    fused, fused2 = kernels().binary_weights([w, w2], [m, m2], [alpha, alpha2])
    eager = torch.addcmul(torch.zeros(()), torch.sign(w), m, value=alpha.item())
    assert torch.equal(fused, eager)
    assert not torch.signbit(fused[m == 0]).any()  # +0 where pruned, as eager (not -0)
    assert torch.equal(fused2, torch.sign(w2) * m2 * 2.5)


def test_an_exact_mask_sets_alpha_on_the_way():
    gen = torch.Generator().manual_seed(6)
    s, w = torch.randn(30_000, generator=gen), torch.randn(30_000, generator=gen)
    keep, t_true = 7_000, _kth_largest_abs(s, 7_000)
    out, alpha = torch.empty_like(s), torch.full((), -1.0)
    buf, where = torch.empty(1 << 16), torch.empty(1 << 16, dtype=torch.int64)
    count = kernels().topk_bracket(s, keep, out, w, 0.9 * t_true, 1.1 * t_true, buf, where, alpha)
    reference = float((w.double().abs() * out.double()).sum()) / keep
    assert count[0] == keep and float(alpha) == pytest.approx(reference, rel=1e-6)
    alpha.fill_(-1.0)  # a missed bracket leaves it alone
    missed = kernels().topk_bracket(s, keep, out, w, 2 * t_true, 3 * t_true, buf, where, alpha)
    assert missed[0] == -2
    assert float(alpha) == -1.0
    row, _buf = _among_row(s, keep, out, w, alpha=alpha)
    assert kernels().topk_among_rows(row)[0] == [keep]
    assert float(alpha) == pytest.approx(reference, rel=1e-6)


def test_topk_among_rows_gives_each_layer_what_it_gives_alone():
    """Several layers in one call: each row gives what it gives in a call of its own."""
    gen = torch.Generator().manual_seed(7)
    sizes, keeps = (1_000, 30_000, 5), (500, 7_001, 2)
    idx = torch.arange(0, 30_000, 3)  # candidates for the middle layer: not its threshold

    def layers():  # the same inputs, fresh outputs
        gen.manual_seed(7)
        s = [torch.randn(n, generator=gen) for n in sizes]
        w = [torch.randn(n, generator=gen) for n in sizes]
        outs, alphas = [torch.empty(n) for n in sizes], [torch.full((), -1.0) for _ in sizes]
        rows = [
            _among_row(s[i], keeps[i], outs[i], w[i], idx if i == 1 else None, None, alphas[i])
            for i in range(len(sizes))
        ]
        return rows, outs, alphas, (s, w)  # the inputs too: rows hold their addresses

    rows, outs, alphas, _inputs = layers()
    counts, ts = kernels().topk_among_rows([x for row, _ in rows for x in row])
    alone_rows, alone_outs, alone_alphas, _alone_inputs = layers()
    alone = [kernels().topk_among_rows(row) for row, _ in alone_rows]
    assert counts == [c for (c,), _ in alone] and ts == [t for _, (t,) in alone]
    assert all(torch.equal(a, b) for a, b in zip(outs, alone_outs, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(alphas, alone_alphas, strict=True))
    assert counts[0] == 500 and counts[1] != 7_001  # an exact layer and a miss, side by side
    assert float(alphas[1]) == -1.0 and float(alphas[0]) > 0  # alpha only where exact


def test_usable_only_for_contiguous_float32_on_cpu():
    x = torch.zeros(4, 4)
    assert kernels_module.usable(x, x)
    assert not kernels_module.usable(x, x.t())
    assert not kernels_module.usable(x.double())


def _kernels_in_subprocess(env: dict[str, str]) -> str:
    code = "from ticketkit.masks.kernels import kernels; print(kernels() is not None)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_disabled_or_without_a_compiler_everything_falls_back(tmp_path, monkeypatch):

    base = {**os.environ, "TICKETKIT_CACHE": str(tmp_path / "cache")}
    assert _kernels_in_subprocess({**base, "TICKETKIT_KERNELS": "0"}) == "False"
    assert _kernels_in_subprocess({**base, "CC": "false"}) == "False"
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written left behind
    assert _kernels_in_subprocess(base) == "True"
    assert len(list((tmp_path / "cache").glob("kernels-*.so"))) == 1


def test_nan_scores_end_instead_of_hanging():
    """A diverged run must fail visibly later, not hang in the partition."""
    s = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    s[::7] = float("nan")
    count, _, _, out = _small(s, 1000)  # NaN inside the partition: any order, but it ends
    assert 0 <= count <= 5000 and set(out.unique().tolist()) <= {0.0, 1.0}
    count, t, _, _, out = _bracket(s, 1000, 0.0, math.inf, capacity=5000)
    assert count == 1000 and t == _kth_largest_abs(s.nan_to_num(0.0), 1000)  # NaN is never kept
