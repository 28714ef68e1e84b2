"""biprop specifics: the global-scope sparsity ramp, +BN, MPT-1/1 architectures."""

import pytest
import torch

from ticketkit.plugin import Setup
from ticketkit.plugins.methods.biprop import Biprop, BipropOptions


def test_global_ramp_goes_cubically_from_half_to_the_target():
    m = Biprop(BipropOptions(ramp_epochs=10), Setup(k=0.1, scope="global", epochs=100))
    ks = [m.keep_at(e) for e in range(12)]
    assert ks[0] == pytest.approx(0.5)
    assert ks[5] == pytest.approx(1 - (0.9 + (0.5 - 0.9) * 0.5**3))
    assert all(a >= b for a, b in zip(ks, ks[1:]))
    assert ks[10] == ks[11] == 0.1


def test_ramp_only_for_global_scope_at_high_sparsity_and_fits_short_runs():
    assert Biprop(BipropOptions(), Setup(k=0.1, scope="layer", epochs=50)).keep_at(0) == 0.1
    assert Biprop(BipropOptions(), Setup(k=0.6, scope="global", epochs=50)).keep_at(0) == 0.6
    short = Biprop(BipropOptions(ramp_epochs=10), Setup(k=0.2, scope="global", epochs=3))
    assert short.keep_at(0) == pytest.approx(0.5) and short.keep_at(2) == 0.2


def test_learn_bn_trains_affine_batchnorm_in_mpt_1_1(cli, tmp_path):
    from ticketkit.artifacts.ticket import Ticket

    args = "prune --method biprop --arch conv4 --binary-act --learn-bn --k 0.5 --dataset digits"
    r = cli(*args.split(), "--epochs", "2", "--out", tmp_path)
    assert r.code == 0, r.err
    t = Ticket.read(r.out.strip())
    assert t.meta["arch_kwargs"]["affine_bn"] is True and t.meta["arch_kwargs"]["binary_act"]
    gammas = [v for k, v in t.tensors.items() if k.startswith("state.") and k.endswith(".weight")]
    assert gammas and any(not torch.allclose(g, torch.ones_like(g)) for g in gammas)
    assert t.meta["weights"] == "sign"
