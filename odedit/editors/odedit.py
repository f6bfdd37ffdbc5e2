"""ODEdit (Su et al., arXiv 2601.19700) as a wrapper objective over any base editor.

G = R_rel(IN) + mean_SE R_gen + mean_OUT R_loc + lambda(delta, phi_e) * (mean_e |dR_e/dw|)^2

  R_rel   -log p(y_e | m_e, x_e) on IN                                   (PAPER Eq. 2)
  R_gen   squared multi-scale-Gaussian MMD between last hidden states of IN and of each SE
          environment (PAPER Eq. 4-6), plus the target NLL on SE (w_se_nll, INFERRED)
  R_loc   KL(post || pre) on each OUT environment                        (PAPER Eq. 3)
  w       IRMv1-style dummy scalar multiplying the last hidden state before the LM head
          (INFERRED placement), so every risk is a function of w; every dR_e/dw is taken in
          closed form from the logits, or from one backward with one scale per row (all 1):
          the same values either way (`_slope_mode`)
  penalty total variation (TV-l1) of the environment risks w.r.t. w: (mean_e |dR_e/dw|)^2,
          taken ACROSS ENVIRONMENTS (PAPER Eq. 9, after IRM-TV, Lai & Wang 2024)
  lambda  a small network Linear-ReLU-Linear-Softplus over a count sketch of the edit's
          parameter change (INFERRED compression, O(edited parameters) memory); updated by dual
          ASCENT at phi^{k+1} (PAPER Eq. 13) on lambda * (TV / tv_level - 1) (INFERRED constraint
          level: lambda falls once the risks agree across environments), annealed in after
          `tv_warmup_steps`, clamped to [0, lambda_max]; dual=False keeps it at lambda_init
          (no network at all then)
  rows    PRODUCT (cost): with `env_samples` k > 0 each step draws k rows of every SE / OUT
          environment anew (IN and KEEP whole); the paper's objective (k = 0) uses every row
"""

from __future__ import annotations

import math
import random

import torch

from odedit.config import ODEditConfig
from odedit.editors import losses
from odedit.editors.env_batch import EnvBatch
from odedit.models.adapter import MLLMAdapter


class LambdaNet(torch.nn.Module):
    """lambda(delta, phi_e) >= 0 from a compressed view of the edit's parameter change.

    The compression is a count sketch (INFERRED): each edited scalar adds +-its change into one
    of `lambda_features` buckets, chosen by a seeded hash. It approximately preserves inner
    products like a dense random projection, at O(edited parameters) memory (a uint8 bucket and a
    sign per scalar, ~2 bytes each) instead of O(edited parameters x features) floats."""

    CHUNK = 1 << 20

    def __init__(self, params: list[torch.nn.Parameter], config: ODEditConfig, seed: int):
        super().__init__()
        if not 1 <= config.lambda_features <= 256:
            raise ValueError("lambda_features must be in 1..256 (a uint8 bucket per parameter)")
        self.config = config
        self.origin = [p.detach().clone() for p in params]
        gen = torch.Generator().manual_seed(seed)
        n = sum(p.numel() for p in params)
        self._bucket = torch.randint(0, config.lambda_features, (n,), generator=gen, dtype=torch.uint8)
        self._sign = (torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8) * 2 - 1)
        self._scale = 1.0 / math.sqrt(max(1.0, n / config.lambda_features))  # features O(|delta|)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(config.lambda_features, config.lambda_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(config.lambda_hidden, 1),
        )
        with torch.no_grad():  # start at lambda_init
            self.net[2].weight.mul_(0.01)
            self.net[2].bias.fill_(math.log(math.expm1(max(config.lambda_init, 1e-4))))

    @torch.no_grad()
    def features(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The count sketch of the change (detached: lambda is the dual variable, INFERRED)."""
        out = torch.zeros(self.config.lambda_features, dtype=torch.float32)
        start = 0
        for p, o in zip(params, self.origin):
            flat = (p.detach() - o).flatten().float().cpu()
            for i in range(0, flat.numel(), self.CHUNK):
                part = flat[i:i + self.CHUNK]
                sl = slice(start + i, start + i + part.numel())
                out.index_add_(0, self._bucket[sl].long(), part * self._sign[sl])
            start += flat.numel()
        return out * self._scale

    def forward(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        lam = torch.nn.functional.softplus(self.net(self.features(params))).squeeze()
        return lam.clamp(max=self.config.lambda_max)


class _Layout:
    """A step's environments as weights over its rows, so that every environment's risk (and
    slope) is one matrix-vector product of per-row terms, not a loop of small ops per
    environment. Environments in order IN first, then by name; an environment with rows in two
    groups (image, text) weighs each part by its own mean, as G sums them."""

    KINDS = ("IN", "SE", "OUT", "KEEP")

    def __init__(self, batch: EnvBatch, config: ODEditConfig, w_replay: float, device, shared: dict):
        names = sorted({er.env.name for er in batch.rows}, key=lambda n: (n != "IN", n))
        index = {n: i for i, n in enumerate(names)}
        kind_of = {er.env.name: er.env.kind for er in batch.rows}
        self.envs = names
        weight = {"IN": config.w_rel, "SE": config.w_se_nll, "KEEP": w_replay}

        def tensor(rows):
            return torch.tensor(rows, dtype=torch.float32, device=device)

        self.device = device
        # per group, the positions the losses read (the forward may skip the rest)
        every = config.kl_positions == "all" or (bool(config.w_gen) and config.mmd_positions == "prompt")
        self.read = {g: losses.read_positions(enc.labels, enc.inputs["attention_mask"], every)
                     for g, enc in batch.encoded.items()}
        self.nll_w, self.kl_w, self.out_rows, self.fit_w = {}, {}, {}, {}
        self._member: dict[str, list] = {}
        self.keep_rows: dict[str, list[torch.Tensor]] = {}  # KEEP parts: their fit is the worst row's NLL
        self.in_fit: tuple[str, int] | None = None  # (group, row of fit_w) of IN's fit
        for g, enc in batch.encoded.items():
            parts = [(index[er.env.name], er.env.kind, er.rows.tolist()) for er in batch.rows if er.group == g]
            out = sorted({r for _, kind, rows in parts if kind == "OUT" for r in rows})
            at = {r: i for i, r in enumerate(out)}
            nll_w = [[0.0] * enc.size for _ in names]
            member = [[0.0] * enc.size for _ in names]
            kl_w = [[0.0] * len(out) for _ in names]
            fit_w = []
            self.keep_rows[g] = []
            for e, kind, rows in parts:
                for r in rows:
                    member[e][r] = 1.0
                    if kind == "OUT":
                        kl_w[e][at[r]] += config.w_loc / len(rows)
                    else:
                        nll_w[e][r] += weight[kind] / len(rows)
                if kind == "KEEP":
                    self.keep_rows[g].append(torch.tensor(rows, device=device))
                elif kind in ("IN", "SE"):  # their fit: the part's mean target NLL
                    if kind == "IN" and self.in_fit is None:
                        self.in_fit = (g, len(fit_w))
                    fit_w.append([1.0 / len(rows) if r in rows else 0.0 for r in range(enc.size)])
            has_nll = any(kind != "OUT" for _, kind, _ in parts)
            self.nll_w[g] = tensor(nll_w) if has_nll else None
            self.fit_w[g] = tensor(fit_w) if fit_w else None
            self.kl_w[g] = tensor(kl_w) if out else None
            self.out_rows[g] = torch.tensor(out, dtype=torch.long, device=device) if out else None
            self._member[g] = member
        if config.w_gen:
            self._mmd_samples(batch, config, index, device)
        self.kinds = [k for k in self.KINDS if k in kind_of.values()]
        # G = the sum over kinds of the mean risk of that kind's environments (the same every step)
        kinds = tuple(kind_of[n] for n in names)
        if kinds not in shared:
            kind_mean = [[float(kind == k) for kind in kinds] for k in self.kinds]
            shared[kinds] = tensor([[v / sum(row) for v in row] for row in kind_mean])
        self.kind_mean = shared[kinds]

    def member(self, group: str) -> torch.Tensor:
        """[environments, rows] 1 where a row is the environment's (the "rows" slope mode's sum)."""
        return torch.tensor(self._member[group], dtype=torch.float32, device=self.device)

    def _mmd_samples(self, batch: EnvBatch, config: ODEditConfig, index: dict, device) -> None:
        """Which last hidden states are MMD samples (answer positions, or real prompt tokens),
        per group a mask over [rows, T-1]; of those, the IN part's (the reference sample of every
        SE part) and each SE part's, as indices; and the SE parts' environments and sizes. An SE
        part without samples has no MMD term, as before."""
        self.state_mask, self.se_index = {}, {}
        self.in_index: tuple[str, torch.Tensor] | None = None
        self.se_env, self.se_sizes = [], []
        for g, enc in batch.encoded.items():
            answer = losses.answer_mask(enc.labels)
            mask = answer if config.mmd_positions == "answer" else \
                enc.inputs["attention_mask"][:, :-1].bool().to(answer.device) & ~answer
            self.state_mask[g] = mask
            at: dict[int, list[int]] = {}
            for i, r in enumerate(mask.nonzero()[:, 0].tolist()):
                at.setdefault(r, []).append(i)
            se = []
            for er in batch.rows:
                if er.group != g or er.env.kind not in ("IN", "SE"):
                    continue
                idx = [i for r in er.rows.tolist() for i in at.get(r, [])]
                if er.env.kind == "IN":
                    self.in_index = (g, torch.tensor(idx, dtype=torch.long, device=device))
                elif idx:
                    se += idx
                    self.se_env.append(index[er.env.name])
                    self.se_sizes.append(len(idx))
            self.se_index[g] = torch.tensor(se, dtype=torch.long, device=device) if se else None
        self.se_env = torch.tensor(self.se_env, dtype=torch.long, device=device)


class ODEditObjective:
    """Computes G for one optimisation step and owns the dual (lambda) update."""

    def __init__(self, adapter: MLLMAdapter, batch: EnvBatch, params, config: ODEditConfig, seed: int,
                 w_replay: float = 1.0):
        self.adapter, self.batch, self.params, self.config = adapter, batch, params, config
        self.w_replay = w_replay
        with torch.no_grad():  # pre-edit distributions of the OUT rows (the KL's reference), computed once
            out_rows = {g: sorted({r for er in batch.rows if er.env.kind == "OUT" and er.group == g
                                   for r in er.rows.tolist()}) for g in batch.encoded}
            self._pre = {g: l[out_rows[g]].detach() for g, (_, l) in batch.forward(adapter).items()}
            self._pre_at = {}  # batch row -> row of self._pre (-1: not an OUT row)
            for g, enc in batch.encoded.items():
                self._pre_at[g] = torch.full((enc.size,), -1, dtype=torch.long)
                self._pre_at[g][out_rows[g]] = torch.arange(len(out_rows[g]))
        # with the dual step off lambda IS lambda_init: no network, no sketch of the change per step
        # (which copies the whole edited tensor to the CPU) and no per-parameter hash memory
        self.lambda_net = LambdaNet(params, config, seed) if config.dual else None
        self.dual_opt = (torch.optim.SGD(self.lambda_net.parameters(), lr=config.lambda_lr, maximize=True)
                         if self.lambda_net is not None else None)
        self.step_index = 0
        self._dual_pending = False
        self._rng = self.row_rng(seed)
        self._full_layout = None
        self._shared: dict = {}  # what every step's layout shares (its kinds' averaging matrix)

    @staticmethod
    def row_rng(seed: int) -> random.Random:
        """The draws of stochastic environments: the same rows step by step for a given seed."""
        return random.Random(f"{seed}:env_samples")

    def _step_batch(self) -> tuple[EnvBatch, dict[str, torch.Tensor] | None]:
        """This step's rows: every row (None: rows are the batch's own), or with `env_samples` > 0
        that many rows of each SE / OUT environment drawn anew each step (IN and KEEP whole),
        with, per group, the batch rows the view's rows are."""
        if self.config.env_samples <= 0 or not self.batch.can_sample:
            return self.batch, None
        return self.batch.sample(self.config.env_samples, self._rng, whole=("IN", "KEEP"))

    def _layout(self, batch: EnvBatch) -> "_Layout":
        """Where this step's environments sit in its rows (built once for the whole batch)."""
        if batch is self.batch:
            if self._full_layout is None:
                self._full_layout = _Layout(batch, self.config, self.w_replay, self.adapter.device, self._shared)
            return self._full_layout
        return _Layout(batch, self.config, self.w_replay, self.adapter.device, self._shared)

    def _pre_logits(self, group: str, rows: torch.Tensor, length: int) -> torch.Tensor:
        """Pre-edit logits of the OUT `rows` (rows of the whole batch), `length` positions."""
        return self._pre[group][self._pre_at[group][rows]][:, :length]

    def _slope_mode(self, batch: EnvBatch, tv_on: bool) -> str | None:
        """How this step takes dR_e/dw (None: no penalty this step). All give the same values:
          "closed"  the slopes in closed form from the logits (losses module docstring): where the
                    logits are a plain linear head of the cached-prefix decoder's last state;
          "rows"    one backward with a scale per row (a family's own forward, e.g. a logit
                    soft-cap after the head): dR_e/dw = the sum of dR/dw_r over e's rows;
          "loop"    one grad per environment with one scalar w on every row: with a detached MMD
                    bandwidth, whose share of dR/dw is not 0 (the MMD couples IN's rows with
                    each SE's). Else the MMD's share is exactly 0 (the kernel's bandwidth follows
                    the states' scale), so the MMD reads the unscaled states."""
        if not tv_on:
            return None
        if self.config.tv_grads == "loop" or self.config.mmd_bandwidth != "differentiable":
            return "loop"
        head = self.adapter.model.get_output_embeddings()
        return "closed" if batch.can_sample and type(head) is torch.nn.Linear else "rows"

    def __call__(self) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        batch, orig = self._step_batch()
        lay = self._layout(batch)
        mode = self._slope_mode(batch, cfg.tv and self.step_index >= cfg.tv_warmup_steps and len(batch.rows) > 1)
        dev = self.adapter.device
        if mode == "rows":
            w = {g: torch.ones(enc.size, 1, 1, device=dev, requires_grad=True) for g, enc in batch.encoded.items()}
            out = batch.forward(self.adapter, scale=w, raw=True, positions=lay.read)
        elif mode == "loop":
            w = torch.ones((), device=dev, requires_grad=True)
            out = batch.forward(self.adapter, scale=w, positions=lay.read)
        else:
            w = None
            out = batch.forward(self.adapter, positions=lay.read)
        bias = self.adapter.model.get_output_embeddings().bias if mode == "closed" else None
        bias = None if bias is None else bias.detach().float()
        risks = torch.zeros(len(lay.envs), device=dev)
        slopes = torch.zeros(len(lay.envs), device=dev) if mode == "closed" else None
        fits: dict[str, torch.Tensor] = {}  # per IN / SE part its mean target NLL (the early-stop criterion)
        keep_fits: list[torch.Tensor] = []  # per KEEP part its worst row's
        for g, enc in batch.encoded.items():
            logits = out[g][1]
            if lay.nll_w[g] is not None:  # IN / SE / KEEP rows: target NLL
                if mode != "closed":
                    per = losses.nll(logits, enc.labels, cfg.nll_reduction)
                else:
                    per, sl = losses.nll_with_slope(logits, enc.labels, bias, cfg.nll_reduction)
                    slopes = slopes + lay.nll_w[g] @ sl
                risks = risks + lay.nll_w[g] @ per
                if lay.fit_w[g] is not None:
                    fits[g] = lay.fit_w[g] @ per.detach()
                keep_fits += [per[rows].detach().max() for rows in lay.keep_rows[g]]
            if lay.out_rows[g] is not None:  # OUT rows: KL to the pre-edit distributions
                r = lay.out_rows[g]
                pre = self._pre_logits(g, r if orig is None else orig[g][r], logits.shape[1])
                k, sl = losses.kl_with_slope(logits[r], pre, enc.labels[r], cfg.kl_direction, cfg.kl_positions,
                                             enc.inputs["attention_mask"][r], bias, slope=mode == "closed")
                risks = risks + lay.kl_w[g] @ k
                if sl is not None:
                    slopes = slopes + lay.kl_w[g] @ sl
        if cfg.w_gen and lay.in_index is not None and len(lay.in_index[1]) and lay.se_sizes:
            # MMD samples: last hidden states at the answer (or prompt) positions; IN's first
            states = {g: out[g][0][:, :-1][mask] for g, mask in lay.state_mask.items()}
            g_in, i_in = lay.in_index
            z = torch.cat([states[g_in][i_in]] + [states[g][i] for g, i in lay.se_index.items() if i is not None])
            # differentiated once (the penalty's own grads never pass through it, bar "loop")
            mmd = losses.mmd2_pooled(z, len(i_in), lay.se_sizes, cfg.mmd_scales, cfg.mmd_bandwidth,
                                     once=mode != "loop")
            risks = risks.index_add(0, lay.se_env, cfg.w_gen * mmd)
        by_kind = lay.kind_mean @ risks
        total = by_kind.sum()
        stats = {f"risk_{k.lower()}": v for k, v in zip(lay.kinds, by_kind.detach().tolist())}
        if cfg.stop_on == "in" and lay.in_fit is not None:
            stats["fit"] = fits[lay.in_fit[0]][lay.in_fit[1]].item()
        else:
            stats["fit"] = torch.cat(list(fits.values()) + [f.reshape(1) for f in keep_fits]).max().item()
        if mode is not None and len(lay.envs) > 1:
            penalty = self._risk_slopes(mode, risks, slopes, lay, w).abs().mean().pow(2)
            if self._dual_pending:  # the risks now are those at phi^{k+1}: Eq. 13's dual step
                self._dual_ascent(penalty.detach().item())
            lam = (self.lambda_net(self.params).detach().item()  # the primal step treats lambda as fixed
                   if self.lambda_net is not None else cfg.lambda_init)
            total = total + lam * penalty
            stats.update(tv_penalty=penalty.item(), lam=lam)
        self.step_index += 1
        return total, stats

    @staticmethod
    def _risk_slopes(mode: str, risks: torch.Tensor, slopes: torch.Tensor | None, lay: "_Layout",
                     w: torch.Tensor | dict[str, torch.Tensor] | None) -> torch.Tensor:
        """dR_e/dw for every environment, differentiable (the penalty is trained through)."""
        if mode == "closed":
            return slopes
        if mode == "loop":
            return torch.stack([torch.autograd.grad(r, w, create_graph=True)[0] for r in risks])
        groups = list(w)
        grads = torch.autograd.grad(risks.sum(), [w[g] for g in groups], create_graph=True, allow_unused=True)
        return sum(lay.member(g) @ (gr if gr is not None else torch.zeros_like(w[g])).flatten()
                   for g, gr in zip(groups, grads))

    def _dual_ascent(self, penalty: float) -> None:
        """delta <- delta + gamma2 * grad_delta [lambda(delta, phi^{k+1}) * v], v = TV(phi^{k+1}) / level - 1
        clipped to [-1, 1] (INFERRED: one step can neither jump lambda to its cap nor zero it)."""
        lam = self.lambda_net(self.params)
        violation = max(-1.0, min(1.0, penalty / self.config.tv_level - 1.0))
        grads = torch.autograd.grad(lam * violation, list(self.lambda_net.parameters()), allow_unused=True)
        for p, g in zip(self.lambda_net.parameters(), grads):
            p.grad = g
        self.dual_opt.step()
        self.dual_opt.zero_grad(set_to_none=True)
        self._dual_pending = False

    def dual_step(self) -> None:
        """Called after each primal step: the dual ascent is due, and runs at the start of the next
        step's objective, where the risks at phi^{k+1} are computed anyway (no extra forward).
        The last primal step's dual update would never be used, so it is not taken."""
        self._dual_pending = self.lambda_net is not None and self.config.lambda_lr > 0
