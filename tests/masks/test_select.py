import math

import pytest
import torch

from ticketkit.masks.select import Selector, kept_count, select_on_device


def reference_mask(a: torch.Tensor, keep: int) -> torch.Tensor:
    """Top-`keep` by value, ties broken by lowest index (stable sort on -a)."""
    order = torch.sort(-a, stable=True).indices
    mask = torch.zeros_like(a, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


@pytest.mark.parametrize("n", [7, 1000, 20_000, 300_000])
@pytest.mark.parametrize("k", [0.01, 0.2, 0.5, 0.95])
def test_selection_matches_a_full_sort(n, k):
    gen = torch.Generator().manual_seed(n)
    a = torch.rand(n, generator=gen)
    keep = kept_count(n, k)
    assert torch.equal(Selector().mask(a, keep), reference_mask(a, keep))


def test_warm_selector_stays_exact_while_values_drift():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, generator=gen).abs()
    sel = Selector()
    keep = kept_count(a.numel(), 0.3)
    for step in range(30):
        # small drift (a training step), then a large jump that must defeat the warm bracket
        a = a + (1e-3 if step != 20 else 0.5) * torch.randn(a.shape, generator=gen)
        a = a.abs()
        mask = sel.mask(a, keep)
        assert int(mask.sum()) == keep
        assert torch.equal(mask, reference_mask(a, keep))


def test_ties_are_broken_by_index_and_count_is_exact():
    a = torch.tensor([0.5, 1.0, 0.5, 0.5, 2.0, 0.5] * 5000)
    for keep in (1, 2, 3, 5000, 10_001, 29_999):
        mask = Selector().mask(a, keep)
        assert int(mask.sum()) == keep
        assert torch.equal(mask, reference_mask(a, keep))


@pytest.mark.parametrize("n", [7, 1000, 300_000])
@pytest.mark.parametrize("k", [0.001, 0.2, 0.5, 0.95])
def test_the_accelerators_selection_matches_a_full_sort_ties_included(n, k):
    """`select_on_device` is what CUDA runs; its arithmetic is device-agnostic, so it is
    checked here on CPU tensors (tests/test_gpu.py runs it on a GPU)."""
    gen = torch.Generator().manual_seed(n)
    for a in (torch.rand(n, generator=gen), torch.randint(0, 4, (n,), generator=gen).float()):
        keep = kept_count(n, k)
        mask = select_on_device(a, keep)
        assert int(mask.sum()) == keep
        assert torch.equal(mask, reference_mask(a, keep))


def test_keep_all_and_float_output():
    a = torch.rand(100)
    out = torch.empty(100)
    Selector().select(a, 100, out)
    assert torch.equal(out, torch.ones(100))
    Selector().select(a, 10, out)
    assert out.sum() == 10 and set(out.unique().tolist()) == {0.0, 1.0}


def test_kept_count_uses_the_references_rounding():
    for n in (1, 9, 100, 1234, 4_300_992):
        for k in (0.1, 0.2, 0.3, 0.5, 0.8, 1.0):
            assert kept_count(n, k) == n - math.floor((1 - k) * n)
    assert kept_count(10, 0.3) == 3
    assert kept_count(9, 0.5) == 5  # floor(4.5) = 4 pruned


@pytest.fixture(params=["fused", "eager"])
def fused(request, monkeypatch):
    """Run a test with the compiled kernels (when there is a compiler) and without."""
    import ticketkit.masks.select as select_module
    from ticketkit.masks.kernels import kernels

    if request.param == "eager":
        monkeypatch.setattr(select_module, "kernels", lambda: None)
    elif kernels() is None:
        pytest.skip("no C compiler")
    return request.param == "fused"


@pytest.mark.parametrize("n", [1000, 200_000])
def test_top_abs_stays_exact_while_scores_drift(n, fused):
    """The warm bracket (around the last threshold) and its fallbacks stay exact: drift, a
    jump that moves everything, exact ties of |s| at every rank, and a change of k."""
    gen = torch.Generator().manual_seed(n)
    s, w = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    out, scratch = torch.empty(n), torch.empty(n)
    sel, writes = Selector(), 0
    for step in range(40):
        k = 0.3 if step < 30 else 0.6
        if step == 20:
            s = s + 0.5 * torch.randn(n, generator=gen)  # everything moves
        elif step == 25:
            s[: n // 2] = s[n // 2 : 2 * (n // 2)].neg()  # exact ties of |s| at every rank
        else:
            s = s + 1e-3 * torch.randn(n, generator=gen)
        keep = kept_count(n, k)
        alpha = torch.zeros(())
        written = sel.top_abs(s, keep, out, scratch, w, alpha)
        expected = reference_mask(s.abs(), keep)
        assert torch.equal(out, expected.float()), step
        writes += written
        if written:  # only the fused pass sets alpha on the way
            reference = float((w.double().abs() * expected.double()).sum()) / keep
            assert float(alpha) == pytest.approx(reference, rel=1e-6)
    assert (writes > 0) == fused


def test_top_abs_many_is_top_abs_layer_by_layer(fused, monkeypatch):
    """Warm tries of several layers in one call give each layer's exact mask and alpha, through
    drift (warm hits), a jump (misses, then backoff and brackets) and a change of k."""
    from ticketkit.masks.kernels import Kernels
    from ticketkit.masks.select import top_abs_many

    batched = []
    real = Kernels.topk_among_rows

    def counting(self, rows):
        batched.append(len(rows) // 10)
        return real(self, rows)

    monkeypatch.setattr(Kernels, "topk_among_rows", counting)

    gen = torch.Generator().manual_seed(3)
    sizes = (1000, 200_000, 30_000)
    s = [torch.randn(n, generator=gen) for n in sizes]
    w = [torch.randn(n, generator=gen) for n in sizes]
    selectors = [Selector() for _ in sizes]
    outs, scratch = [torch.empty(n) for n in sizes], [torch.empty(n) for n in sizes]
    all_written = 0
    for step in range(30):
        k = 0.3 if step < 24 else 0.5
        scale = 0.5 if step == 12 else 1e-3  # step 12: everything moves
        s = [x + scale * torch.randn(x.shape, generator=gen) for x in s]
        keeps = [kept_count(n, k) for n in sizes]
        alphas = [torch.zeros(()) for _ in sizes]
        jobs = [
            (selectors[i], s[i], keeps[i], outs[i], scratch[i], w[i], alphas[i])
            for i in range(len(sizes))
        ]
        written = top_abs_many(jobs)
        for i, keep in enumerate(keeps):
            expected = reference_mask(s[i].abs(), keep)
            assert torch.equal(outs[i], expected.float()), (step, i)
            if written[i]:
                reference = float((w[i].double().abs() * expected.double()).sum()) / keep
                assert float(alphas[i]) == pytest.approx(reference, rel=1e-6)
        all_written += all(written)
    assert (all_written > 20) == fused  # the fused path sets alpha on (almost) every step
    assert (batched.count(3) >= 15) == fused  # ... with every layer's warm try in one call
