"""ODEdit's risk terms on hand-made tensors."""

import math

import torch

from odedit.editors import losses


def test_nll_mean_and_sum_over_target_tokens():
    # vocab 2; target tokens at positions 2 and 3 (predicted by logits at 1 and 2)
    logits = torch.zeros(1, 4, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3)])  # p(token 1) = 3/4
    labels = torch.tensor([[-100, -100, 1, 0]])       # logits[2] uniform -> p(0)=1/2
    mean = losses.nll(logits, labels, "mean")
    total = losses.nll(logits, labels, "sum")
    expected = -(math.log(0.75) + math.log(0.5))
    assert torch.allclose(total, torch.tensor([expected]))
    assert torch.allclose(mean, torch.tensor([expected / 2]))


def test_kl_is_zero_for_identical_and_direction_matters():
    torch.manual_seed(0)
    pre = torch.randn(2, 5, 7)
    post = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    labels[:, 3:] = 1
    assert torch.allclose(losses.kl(pre, pre, labels), torch.zeros(2), atol=1e-6)
    a = losses.kl(post, pre, labels, "post_pre")
    b = losses.kl(post, pre, labels, "pre_post")
    assert (a > 0).all() and (b > 0).all() and not torch.allclose(a, b)


def test_mmd_zero_for_same_samples_positive_for_shifted_and_twice_differentiable():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    assert losses.mmd2(x, x).abs() < 1e-5
    y = (x + 3.0).requires_grad_(True)
    m = losses.mmd2(x, y)
    assert m > 0.1
    (g,) = torch.autograd.grad(m, y, create_graph=True)
    g.abs().sum().backward()  # second order works (cdist's would not)
    assert y.grad is not None
