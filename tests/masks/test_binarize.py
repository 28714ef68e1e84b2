import torch

from ticketkit.masks.binarize import SignActivation, scale_of


def test_sign_activation_forward_and_bireal_backward():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.25, 0.9, 1.5], requires_grad=True)
    y = SignActivation()(x)
    assert torch.equal(y, torch.sign(x.detach()))
    y.sum().backward()
    expected = (2 - 2 * x.detach().abs()).clamp_min(0)  # 0 for |x| >= 1, peak 2 at 0
    assert torch.allclose(x.grad, expected)


def test_scale_is_the_mean_magnitude_of_kept_weights():
    w = torch.tensor([[1.0, -3.0], [2.0, -4.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert scale_of(w.abs(), mask, torch.ones(())) == torch.tensor(8.0 / 3)
    alpha = torch.zeros(())
    scale_of(w.abs(), mask, alpha, kept=3)  # in place
    assert alpha == torch.tensor(8.0 / 3)
    per_channel = scale_of(w.abs(), mask, torch.ones(2, 1))
    assert torch.allclose(per_channel.flatten(), torch.tensor([2.0, 4.0]))
