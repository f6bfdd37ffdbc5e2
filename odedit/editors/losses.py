"""Per-sample risks on teacher-forced batches: target NLL, locality KL, and the multi-scale
Gaussian MMD of ODEdit's generality risk. Logits at position t predict token t+1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from odedit.models.adapter import IGNORE_INDEX


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] mask of positions whose logits predict a target token."""
    return labels[:, 1:] != IGNORE_INDEX


def nll(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-sample -log p(target) under teacher forcing, mean or sum over target tokens."""
    logits, targets = logits[:, :-1], labels[:, 1:]
    mask = targets != IGNORE_INDEX
    tok = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none") * mask
    total = tok.sum(dim=1)
    return total if reduction == "sum" else total / mask.sum(dim=1).clamp(min=1)


def kl(post_logits, pre_logits, labels, direction: str = "post_pre", positions: str = "answer",
       attention_mask: torch.Tensor | None = None):
    """Per-sample KL between post- and pre-edit next-token distributions, mean over positions.
    direction "post_pre" = KL(post || pre) as printed in the paper's Eq. 3. positions "answer":
    the positions predicting target tokens; "all": every REAL position (attention mask 1),
    never padding - the mask is required for "all"."""
    post = F.log_softmax(post_logits[:, :-1], dim=-1)
    pre = F.log_softmax(pre_logits[:, :-1], dim=-1)
    if direction == "post_pre":
        per_pos = (post.exp() * (post - pre)).sum(-1)
    else:
        per_pos = (pre.exp() * (pre - post)).sum(-1)
    if positions == "answer":
        mask = answer_mask(labels)
    else:  # every real (non-padding) position
        if attention_mask is None or attention_mask.shape[-1] != post_logits.shape[1]:
            raise ValueError("kl(positions='all') needs the attention mask of the logits' sequence")
        mask = attention_mask[:, :-1].to(per_pos.device).bool()
    mask = mask.to(per_pos.dtype)
    return (per_pos * mask).sum(1) / mask.sum(1).clamp(min=1)


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
