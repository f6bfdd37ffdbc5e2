"""Per-sample risks on teacher-forced batches: target NLL, locality KL, and the multi-scale
Gaussian MMD of ODEdit's generality risk. Logits at position t predict token t+1.

`token_terms` also returns each position's dR/dw in closed form, where the logits are
z = w * u + b with w a scalar per sample at 1 (IRM's dummy scale on the LM head's input, a
plain linear head: u = z - b). For a next-token distribution p = softmax(z) and a fixed q:
  d CE(z, y) / dw       = sum_i p_i u_i - u_y
  d KL(p || q) / dw     = sum_i p_i u_i (log p_i - log q_i - KL(p || q))
  d KL(q || p) / dw     = sum_i (p_i - q_i) u_i
The slopes are differentiable functions of z and u (a penalty on them trains through), and cost
a few elementwise terms instead of a second, graph-keeping backward through the head."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from odedit.models.adapter import IGNORE_INDEX


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] mask of positions whose logits predict a target token."""
    return labels[:, 1:] != IGNORE_INDEX


def read_positions(labels: torch.Tensor, attention_mask: torch.Tensor | None = None, every: bool = False) -> torch.Tensor:
    """[B, T] the positions whose logits or last hidden states the losses read: those predicting
    a target token (`answer_mask`), or with `every` each real position but the last (the KL or
    the MMD over every position)."""
    read = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    read[:, :-1] = attention_mask[:, :-1].bool().to(labels.device) if every else answer_mask(labels)
    return read


def _positions(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The [N, ...] entries of `t` ([B, T, ...], logits at t predicting t+1) at the masked
    positions of `mask` [B, T-1]: the losses read only these, not every position's vocabulary."""
    return t[:, :-1][mask]


def _per_sample(mask: torch.Tensor, reduction: str = "mean"):
    """A function taking token terms [N] (one per masked position of `mask` [B, T-1], row-major)
    to per-sample sums [B], or averages ("mean"); made once for every term of the same mask."""
    rows = mask.nonzero()[:, 0]
    count = None if reduction == "sum" else mask.sum(dim=1).clamp(min=1)

    def reduce(tok: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(mask.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
        return total if count is None else total / count.to(tok.dtype)
    return reduce


def nll(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-sample -log p(target) under teacher forcing, mean or sum over target tokens: the
    definition on [B, T, V] logits (the objectives take it from `token_terms` on the read
    positions; tested equal)."""
    mask = answer_mask(labels)
    tok = F.cross_entropy(_positions(logits, mask), labels[:, 1:][mask], reduction="none")
    return _per_sample(mask, reduction)(tok)


def kl(post_logits, pre_logits, labels, direction: str = "post_pre", positions: str = "answer",
       attention_mask: torch.Tensor | None = None):
    """Per-sample KL between post- and pre-edit next-token distributions, mean over positions.
    direction "post_pre" = KL(post || pre) as printed in the paper's Eq. 3. positions "answer":
    the positions predicting target tokens; "all": every REAL position (attention mask 1),
    never padding - the mask is required for "all". The definition on [B, T, V] logits (the
    objective takes it from `token_terms` on the read positions; tested equal)."""
    if positions == "answer":
        mask = answer_mask(labels)
    else:  # every real (non-padding) position
        if attention_mask is None or attention_mask.shape[-1] != post_logits.shape[1]:
            raise ValueError("kl(positions='all') needs the attention mask of the logits' sequence")
        mask = attention_mask[:, :-1].to(post_logits.device).bool()
    post = F.log_softmax(_positions(post_logits, mask), dim=-1)
    pre = F.log_softmax(_positions(pre_logits, mask), dim=-1)
    if direction == "post_pre":
        per_pos = (post.exp() * (post - pre)).sum(-1)
    else:
        per_pos = (pre.exp() * (pre - post)).sum(-1)
    return _per_sample(mask)(per_pos)


def token_terms(z: torch.Tensor, targets: torch.Tensor, pre: torch.Tensor | None = None,
                direction: str = "post_pre", bias: torch.Tensor | None = None, slope: bool = False) -> torch.Tensor:
    """Per-position terms on compact logits z [N, V] (one row per read position,
    `readout.ReadOut`), as one [N, 2] tensor (nll, kl), or with `slope` [N, 4] (nll, nll_slope,
    kl, kl_slope): viewed as [2N, 1 or 2], one row per (position, term), a matrix of weights
    over those rows gives every risk (and slope) at once.
    nll: -log p(targets) ([N] token ids; any valid id where unused). kl: with `pre` ([N, V]
    pre-edit log-probabilities; without it 0), KL(p || pre) ("post_pre") or KL(pre || p)
    ("pre_post"). With `slope`: each term's dR/dw for z = w * u + `bias` at w = 1 (module
    docstring), through one fused function (`_TokenTerms`: the same values, its gradient
    written out; differentiable once, as the closed-form slopes need)."""
    if slope:
        b = z.new_zeros(z.shape[-1]) if bias is None else bias
        return _TokenTerms.apply(z, targets, z.new_zeros(0) if pre is None else pre, b, direction == "post_pre")
    logp = F.log_softmax(z, dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if pre is None:
        kl = torch.zeros_like(nll)
    else:
        kl = (logp.exp() * (logp - pre)).sum(-1) if direction == "post_pre" else (pre.exp() * (pre - logp)).sum(-1)
    return torch.stack([nll, kl], dim=-1)


class _TokenTerms(torch.autograd.Function):
    """`token_terms` with slopes, forward and gradient written out (speed: a handful of ops each
    way instead of an autograd graph of a few dozen small ones). With p = softmax(z), u = z - b,
    m = sum p u, a = log p - pre, kl = sum p a (post_pre), A = sum p u a, q = exp(pre):
      d nll / dz        = p - e_y
      d nll_slope / dz  = p (u - m + 1) - e_y
      d kl / dz         = p (a - kl)                                            (post_pre)
      d kl_slope / dz   = p (u a - A + a + u - m - m (a - kl) - kl (u - m + 1))  (post_pre)
      d kl / dz         = p sum(q) - q,  d kl_slope / dz = p (u - m + 1) - q    (pre_post)
    (kl_slope = A - kl m for post_pre, m - sum q u for pre_post). Output [N, 4]: nll, nll_slope,
    kl, kl_slope. Tested against finite differences."""

    @staticmethod
    def forward(ctx, z, targets, pre, bias, post_pre: bool):
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        u = z - bias
        y = targets.unsqueeze(-1)
        m = (p * u).sum(-1)
        nll = -logp.gather(-1, y).squeeze(-1)
        nll_slope = m - u.gather(-1, y).squeeze(-1)
        if pre.numel() == 0:
            kl = kl_slope = torch.zeros_like(nll)
        elif post_pre:
            a = logp - pre
            kl = (p * a).sum(-1)
            kl_slope = (p * u * (a - kl.unsqueeze(-1))).sum(-1)
        else:
            q = pre.exp()
            kl = (q * (pre - logp)).sum(-1)
            kl_slope = m - (q * u).sum(-1)
        ctx.post_pre = post_pre
        ctx.save_for_backward(p, u, m, targets, pre, kl, logp)
        return torch.stack([nll, nll_slope, kl, kl_slope], dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        p, u, m, targets, pre, kl, logp = ctx.saved_tensors
        g_nll, g_ns, g_kl, g_ks = g.unbind(-1)
        du = u - m.unsqueeze(-1) + 1  # d m / dz = p (u - m + 1)
        coef = g_nll.unsqueeze(-1) + g_ns.unsqueeze(-1) * du  # times p
        hot = -(g_nll + g_ns)  # times e_y
        extra = None
        if pre.numel():
            if ctx.post_pre:
                a = logp - pre
                k = kl.unsqueeze(-1)
                mm = m.unsqueeze(-1)
                big_a = (p * u * a).sum(-1, keepdim=True)
                coef = coef + g_kl.unsqueeze(-1) * (a - k) + g_ks.unsqueeze(-1) * (
                    u * a - big_a + a + u - mm - mm * (a - k) - k * du)
            else:
                q = pre.exp()
                coef = coef + g_kl.unsqueeze(-1) * q.sum(-1, keepdim=True) + g_ks.unsqueeze(-1) * du
                extra = -(g_kl + g_ks).unsqueeze(-1) * q
        grad = p * coef
        if extra is not None:
            grad = grad + extra
        grad.scatter_add_(-1, targets.unsqueeze(-1), hot.unsqueeze(-1))
        return grad, None, None, None, None


def mmd2(x: torch.Tensor, y: torch.Tensor, scales: int = 5, bandwidth: str = "differentiable") -> torch.Tensor:
    """Squared MMD with k(a,b) = sum_q exp(-||a-b||^2 / (2 sigma_q^2)), sigma_q^2 = b0 * 2^q,
    b0 the mean pairwise squared distance of the pooled samples. INFERRED bandwidths.

    bandwidth "differentiable": b0 stays in the graph, so gradients (and the IRM dR/dw, where w
    scales the states) are those of the function actually computed; as d2/b0 is invariant to a
    common scale, d mmd2(w x, w y)/dw = 0. "detached": b0 is a constant per call."""
    z = torch.cat([x, y], dim=0).float()
    sq = (z * z).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp(min=0)  # twice-differentiable, unlike cdist
    n = z.shape[0]
    b0 = (d2.sum() / max(n * n - n, 1)).clamp(min=1e-6)
    if bandwidth == "detached":
        b0 = b0.detach()
    kernel = sum(torch.exp(-d2 / (2 * b0 * 2.0**q)) for q in range(-(scales // 2), scales - scales // 2))
    m = x.shape[0]
    kxx, kyy, kxy = kernel[:m, :m], kernel[m:, m:], kernel[:m, m:]
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def mmd2_many(x: torch.Tensor, ys: list[torch.Tensor], scales: int = 5, bandwidth: str = "differentiable",
              max_elements: int = 1 << 22) -> torch.Tensor:
    """[mmd2(x, y) for y in ys] as one batched computation (`mmd2_pooled`); an empty y gives 0."""
    out = torch.zeros(len(ys), device=x.device)
    live = [i for i, y in enumerate(ys) if len(y)]
    if not live or not len(x):
        return out
    z = torch.cat([x] + [ys[i] for i in live], dim=0)
    values = mmd2_pooled(z, len(x), [len(ys[i]) for i in live], scales, bandwidth, max_elements)
    return out.index_put((torch.tensor(live, device=out.device),), values)


@functools.lru_cache(maxsize=256)
def _pairs(m: int, sizes: tuple[int, ...], scales: int, dtype, device):
    """mmd2_pooled's constants for |x| = m and the y sizes: per pair its weights a (1/|x| on x,
    -1/|y| on y, 0 elsewhere), its members, its pooled count of ordered pairs; the kernel's
    scale factors 2^-q (sigma_q^2 = b0 * 2^q). The same every step of an edit: made once."""
    n = m + sum(sizes)
    rows, start = [], m
    for k in sizes:
        rows.append([1.0 / m] * m + [0.0] * (start - m) + [-1.0 / k] * k + [0.0] * (n - start - k))
        start += k
    weight = torch.tensor(rows, dtype=dtype, device=device)
    member = (weight != 0).to(dtype)
    pooled = torch.tensor([(m + k) * (m + k - 1) for k in sizes], dtype=dtype, device=device)
    coef = torch.tensor([2.0**-q for q in range(-(scales // 2), scales - scales // 2)], dtype=dtype, device=device)
    return weight, member, pooled, coef


class _PooledMMD(torch.autograd.Function):
    """`mmd2_pooled` (differentiable bandwidth) with its gradient written out: a handful of ops
    each way instead of a graph of a few dozen small ones (speed only; the same values, and the
    gradient equals autograd's, tested). Once differentiable: where a second derivative passes
    through the MMD (`once=False`), the autograd path runs.
      value_p = a_p^T K_p a_p,  K_p = sum_q exp(-c_q d2 / (2 b_p)),  b_p = <M_p M_p^T, d2> / pooled_p
      d value_p / d d2 = -(a a^T) * sum_q c_q E_q / (2 b_p) + (d value_p / d b_p) M M^T / pooled_p
      d value_p / d b_p = <a a^T, d2 * sum_q c_q E_q> / (2 b_p^2)
      d L / d z = 2 (diag(S 1) - S) z,  S = G + G^T,  G = sum_p g_p d value_p / d d2"""

    @staticmethod
    def forward(ctx, z, weight, member, pooled, coef):
        sq = (z * z).sum(dim=1)
        raw = sq[:, None] + sq[None, :] - 2 * z @ z.T
        d2 = raw.clamp(min=0)
        mean = ((member @ d2) * member).sum(dim=1) / pooled.clamp(min=1)
        b0 = mean.clamp(min=1e-6)
        scaled = d2 / (-2 * b0[:, None, None])  # the autograd path's ops, in its order: the same values
        e = torch.exp(scaled[..., None] * coef)  # [P, n, n, Q]
        kernel = e.sum(dim=-1)
        ctx.save_for_backward(z, weight, member, pooled, coef, raw, d2, mean, b0, e)
        return (weight.unsqueeze(1) @ kernel @ weight.unsqueeze(2)).flatten()

    @staticmethod
    def backward(ctx, g):
        z, weight, member, pooled, coef, raw, d2, mean, b0, e = ctx.saved_tensors
        aa = weight[:, :, None] * weight[:, None, :]
        ec = (e * coef).sum(dim=-1)  # sum_q c_q E_q, [P, n, n]
        direct = aa * ec / (-2 * b0[:, None, None])
        by_b = (aa * ec * d2).sum(dim=(1, 2)) / (2 * b0 * b0) * (mean >= 1e-6)
        mm = member[:, :, None] * member[:, None, :] / pooled.clamp(min=1)[:, None, None]
        grad_d2 = (g[:, None, None] * (direct + by_b[:, None, None] * mm)).sum(dim=0) * (raw >= 0)
        sym = grad_d2 + grad_d2.T
        return 2 * (sym.sum(dim=1, keepdim=True) * z - sym @ z), None, None, None, None


def mmd2_pooled(z: torch.Tensor, m: int, sizes: list[int], scales: int = 5, bandwidth: str = "differentiable",
                max_elements: int = 1 << 22, once: bool = False) -> torch.Tensor:
    """mmd2(x, y_p) for every p, where z = [x; y_1; y_2; ...] with |x| = m and |y_p| = sizes[p]
    (all > 0): the same values as `mmd2` one pair at a time, in a few ops instead of a few dozen
    per pair. The pairwise distances of z once; per pair its own bandwidth b0 over the pooled pair
    and a^T K a, a = 1/|x| on x, -1/|y| on y, 0 elsewhere (= kxx.mean + kyy.mean - 2 kxy.mean).
    Chunked so that a chunk's kernels hold at most `max_elements` values. `once`: the result is
    differentiated once only (no second derivative through it): a fused gradient (`_PooledMMD`)."""
    z = z.float()
    n = z.shape[0]
    weight, member, pooled, coef = _pairs(m, tuple(sizes), scales, z.dtype, z.device)
    if once and bandwidth == "differentiable" and len(sizes) * n * n * len(coef) <= max_elements:
        return _PooledMMD.apply(z, weight, member, pooled, coef)
    sq = (z * z).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp(min=0)  # twice-differentiable, unlike cdist
    b0 = (((member @ d2) * member).sum(dim=1) / pooled.clamp(min=1)).clamp(min=1e-6)
    if bandwidth == "detached":
        b0 = b0.detach()
    chunk = max(1, max_elements // (n * n * len(coef)))
    values = []
    for c in range(0, len(sizes), chunk):
        scaled = d2 / (-2 * b0[c:c + chunk, None, None])
        kernel = torch.exp(scaled[..., None] * coef).sum(dim=-1)
        a = weight[c:c + chunk]
        values.append((a.unsqueeze(1) @ kernel @ a.unsqueeze(2)).flatten())
    return torch.cat(values) if len(values) > 1 else values[0]
