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


def test_kl_all_positions_masks_padding():
    # row 0: 3 real tokens + 2 pads. Real positions are identical pre/post (KL 0); pads differ.
    torch.manual_seed(0)
    pre = torch.randn(1, 5, 7)
    post = pre.clone()
    post[0, 3:] = torch.randn(2, 7) * 5  # logits at padded positions 3, 4 differ
    labels = torch.tensor([[-100, -100, 1, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    assert losses.kl(post, pre, labels, positions="all", attention_mask=mask).item() < 1e-6
    # without masking, the padded position 3 would dominate: (0 + 0 + 0 + kl_3) / 4 > 0
    unmasked = losses.kl(post, pre, labels, positions="all", attention_mask=torch.ones(1, 5))
    assert unmasked.item() > 0.1
    try:
        losses.kl(post, pre, labels, positions="all")
    except ValueError:
        pass
    else:
        raise AssertionError("positions='all' without an attention mask must be refused")


def test_mmd_bandwidth_consistent_with_dR_dw():
    # w scales the states (IRM dummy). With the bandwidth in the graph, mmd2(w x, w y) does not
    # depend on w, and autograd agrees (dR/dw = 0); detaching it gives a nonzero dR/dw that is
    # not the derivative of the function computed.
    torch.manual_seed(1)
    x, y = torch.randn(5, 4), torch.randn(6, 4) + 1.0
    for bw, zero in (("differentiable", True), ("detached", False)):
        w = torch.ones((), requires_grad=True)
        (g,) = torch.autograd.grad(losses.mmd2(x * w, y * w, bandwidth=bw), w)
        assert (abs(g.item()) < 1e-5) == zero, (bw, g.item())
    a = losses.mmd2(x * 2.0, y * 2.0).item()
    assert abs(a - losses.mmd2(x, y).item()) < 1e-5  # finite check: scale-invariant value


def test_closed_form_slopes_equal_autograd():
    """token_terms on compact positions (`ReadOut`, one row per position read): per sample (the
    per-row means of `ReadOut.row_weights`) the values of nll / kl on the [B, T, V] logits, and
    per position the derivative of each term w.r.t. a scale w on the LM head's input
    (logits = w u + b), as autograd takes it."""
    from types import SimpleNamespace

    from odedit.editors.readout import ReadOut

    torch.manual_seed(0)
    B, T, V = 3, 6, 7
    u, b = torch.randn(B, T, V), torch.randn(V)
    pre = torch.randn(B, T, V)
    labels = torch.full((B, T), -100)
    labels[0, 3:] = torch.tensor([1, 2, 3])
    labels[1, 5] = 4
    labels[2, 2:4] = torch.tensor([0, 6])
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    enc = SimpleNamespace(size=B, labels=labels, inputs={"attention_mask": mask})
    for every in (False, True):  # the answer positions, or every real one
        ro = ReadOut.of({"g": enc}, {"g": losses.read_positions(labels, mask, every)})
        r, t = ro.local["g"]
        rows = [{i: 1.0} for i in range(B)]  # each row's own mean
        uc = u[r, t]
        pre_lp = torch.log_softmax(pre[r, t], dim=-1)
        for direction in ("post_pre", "pre_post"):
            w = torch.ones(ro.size, 1, requires_grad=True)
            nll, nll_slope, kl, kl_slope = losses.token_terms(w * uc + b, ro.targets, pre_lp, direction, b,
                                                              slope=True).unbind(-1)
            (want_nll,) = torch.autograd.grad(nll[ro.answer].sum(), w, retain_graph=True)
            (want_kl,) = torch.autograd.grad(kl.sum(), w)
            assert torch.allclose(nll_slope[ro.answer], want_nll.flatten()[ro.answer], atol=1e-5), (every, direction)
            assert torch.allclose(kl_slope, want_kl.flatten(), atol=1e-5), (every, direction)
            z = u + b
            for reduction in ("mean", "sum"):
                per = torch.tensor(ro.spread(rows, ro.row_weights(ro.answer, reduction))) @ nll
                assert torch.allclose(per, losses.nll(z, labels, reduction), atol=1e-6), (every, reduction)
            at = ro.answer if not every else ro.real
            per = torch.tensor(ro.spread(rows, ro.row_weights(at))) @ kl
            want = losses.kl(z, pre, labels, direction, "all" if every else "answer", mask)
            assert torch.allclose(per, want, atol=1e-6), (every, direction)


def test_fused_token_terms_gradient_is_the_numerical_one():
    """_TokenTerms (token_terms with slopes): its written-out gradient of all four outputs
    (NLL, KL, their slopes) against finite differences, both KL directions, a zero pre row (the
    objective's row for positions no KL reads) included; its values are the unfused ones."""
    from odedit.editors.losses import _TokenTerms

    torch.manual_seed(3)
    N, V = 5, 6
    z = torch.randn(N, V, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 5, 1, 2])
    pre = torch.log_softmax(torch.randn(N, V, dtype=torch.float64), dim=-1)
    pre[2] = 0.0
    b = torch.randn(V, dtype=torch.float64)
    for post_pre in (True, False):
        assert torch.autograd.gradcheck(lambda x: _TokenTerms.apply(x, y, pre, b, post_pre), (z,))
        fused = losses.token_terms(z, y, pre, "post_pre" if post_pre else "pre_post", b, slope=True)
        plain = losses.token_terms(z, y, pre, "post_pre" if post_pre else "pre_post")
        assert torch.allclose(fused[:, ::2], plain)  # (nll, kl)
    assert torch.autograd.gradcheck(lambda x: _TokenTerms.apply(x, y, z.new_zeros(0), b, True)[:, :2], (z,))


def test_batched_mmd_equals_one_pair_at_a_time():
    torch.manual_seed(2)
    x = torch.randn(4, 5)
    ys = [torch.randn(3, 5) + 0.5, torch.zeros(0, 5), torch.randn(6, 5) * 2, torch.randn(1, 5)]
    for bw in ("differentiable", "detached"):
        want = torch.stack([losses.mmd2(x, y, bandwidth=bw) if len(y) else torch.zeros(()) for y in ys])
        for max_elements in (1 << 22, 1):  # one chunk, or one pair a chunk
            got = losses.mmd2_many(x, ys, bandwidth=bw, max_elements=max_elements)
            assert torch.allclose(got, want, atol=1e-6), (bw, max_elements, got, want)
    xs = x.clone().requires_grad_(True)  # and the same gradients
    (g1,) = torch.autograd.grad(losses.mmd2_many(xs, ys).sum(), xs)
    (g2,) = torch.autograd.grad(sum(losses.mmd2(xs, y) for y in ys if len(y)), xs)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_fused_mmd_gradient_is_autograds():
    """The MMD differentiated once (`once=True`, the objective's path): the same values as the
    autograd path to the bit, its written-out gradient equal to autograd's, and gradcheck holds."""
    from odedit.editors.losses import _PooledMMD, _pairs

    torch.manual_seed(0)
    for m, sizes in ((2, [3, 3]), (1, [4]), (3, [2, 5, 1])):
        z = torch.randn(m + sum(sizes), 16, requires_grad=True)
        slow, fast = losses.mmd2_pooled(z, m, sizes), losses.mmd2_pooled(z, m, sizes, once=True)
        assert torch.equal(slow, fast)
        g = torch.randn(len(sizes))
        (want,) = torch.autograd.grad((slow * g).sum(), z)
        (got,) = torch.autograd.grad((fast * g).sum(), z)
        assert torch.allclose(got, want, atol=1e-6) and want.abs().max() > 1e-3
        zd = z.detach().double().requires_grad_(True)
        const = _pairs(m, tuple(sizes), 5, torch.float64, zd.device)
        assert torch.autograd.gradcheck(lambda t: _PooledMMD.apply(t, *const), (zd,))
