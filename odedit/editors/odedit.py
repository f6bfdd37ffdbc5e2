"""ODEdit (Su et al., arXiv 2601.19700) as a wrapper objective over any base editor.

G = R_rel(IN) + mean_SE R_gen + mean_OUT R_loc + lambda(delta, phi_e) * (mean_e |dR_e/dw|)^2

  R_rel   -log p(y_e | m_e, x_e) on IN                                   (PAPER Eq. 2)
  R_gen   squared multi-scale-Gaussian MMD between last hidden states of IN and of each SE
          environment (PAPER Eq. 4-6), plus the target NLL on SE (w_se_nll, INFERRED)
  R_loc   KL(post || pre) on each OUT environment                        (PAPER Eq. 3)
  w       IRMv1-style dummy scalar multiplying the last hidden state before the LM head
          (INFERRED placement), so every risk is a function of w; taken as one scale per row
          (all 1) so that every dR_e/dw comes from one backward (same values, see `__call__`)
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
        self._rng = random.Random(f"{seed}:env_samples")

    def _states(self, batch: EnvBatch, hidden: torch.Tensor, group: str, rows: torch.Tensor) -> torch.Tensor:
        """Last hidden states used as MMD samples: answer positions, or the real prompt tokens."""
        enc = batch.encoded[group]
        answer = losses.answer_mask(enc.labels[rows])
        if self.config.mmd_positions == "answer":
            mask = answer
        else:
            mask = enc.inputs["attention_mask"][rows][:, :-1].bool() & ~answer
        return hidden[rows][:, :-1][mask]

    def _step_batch(self) -> tuple[EnvBatch, dict[str, torch.Tensor] | None]:
        """This step's rows: every row (None: rows are the batch's own), or with `env_samples` > 0
        that many rows of each SE / OUT environment drawn anew each step (IN and KEEP whole),
        with, per group, the batch rows the view's rows are."""
        if self.config.env_samples <= 0 or not self.batch.can_sample:
            return self.batch, None
        return self.batch.sample(self.config.env_samples, self._rng, whole=("IN", "KEEP"))

    def _pre_logits(self, group: str, rows: torch.Tensor, length: int) -> torch.Tensor:
        """Pre-edit logits of the OUT `rows` (rows of the whole batch), `length` positions."""
        return self._pre[group][self._pre_at[group][rows]][:, :length]

    def __call__(self) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        batch, orig = self._step_batch()
        tv_on = cfg.tv and self.step_index >= cfg.tv_warmup_steps and len(batch.rows) > 1
        # dR_e/dw for every environment from ONE backward: w is one scale per row, and as each
        # environment's NLL / KL reads only its own rows, dR_e/dw = the sum of dR/dw_r over e's
        # rows. MMD couples IN's rows with each SE's, but its dR/dw is exactly 0 (the kernel's
        # bandwidth follows the states' scale), so it reads the unscaled states. With a detached
        # bandwidth that share is not 0: one grad per environment, all rows under one scalar w.
        rowwise = tv_on and cfg.tv_grads == "rows" and cfg.mmd_bandwidth == "differentiable"
        if rowwise:
            w = {g: torch.ones(enc.size, 1, 1, device=self.adapter.device, requires_grad=True)
                 for g, enc in batch.encoded.items()}
            out = batch.forward(self.adapter, scale=w, raw=True)
        else:
            w = torch.ones((), device=self.adapter.device, requires_grad=True) if tv_on else None
            out = batch.forward(self.adapter, scale=w)
        labels = {g: enc.labels for g, enc in batch.encoded.items()}
        in_states = None
        risks: dict[str, list[torch.Tensor]] = {"IN": [], "SE": [], "OUT": [], "KEEP": []}
        env_risks: list[torch.Tensor] = []
        env_parts: list[list] = []  # each environment's (group, rows), aligned with env_risks
        fits: list[float] = []  # target NLL of IN and SE environments (early-stop criterion)
        by_env: dict[str, list] = {}
        for er in batch.rows:
            by_env.setdefault(er.env.name, []).append(er)
        # IN first: its hidden states are the reference sample for every SE environment.
        for name, parts in sorted(by_env.items(), key=lambda kv: kv[0] != "IN"):
            kind = parts[0].env.kind
            risk = torch.zeros((), device=self.adapter.device)
            for er in parts:
                hidden, logits = out[er.group]
                lab = labels[er.group]
                if kind == "OUT":
                    pre = self._pre_logits(er.group, er.rows if orig is None else orig[er.group][er.rows],
                                           logits.shape[1])
                    k = losses.kl(logits[er.rows], pre, lab[er.rows],
                                  cfg.kl_direction, cfg.kl_positions,
                                  batch.encoded[er.group].inputs["attention_mask"][er.rows])
                    risk = risk + cfg.w_loc * k.mean()
                    continue
                if kind == "KEEP":  # lifelong replay (PRODUCT): earlier edits keep their targets
                    per = losses.nll(logits[er.rows], lab[er.rows], cfg.nll_reduction)
                    fits.append(per.max().item())
                    risk = risk + self.w_replay * per.mean()
                    continue
                n = losses.nll(logits[er.rows], lab[er.rows], cfg.nll_reduction).mean()
                fits.append(n.item())
                states = self._states(batch, hidden, er.group, er.rows)
                if kind == "IN":
                    in_states = states
                    risk = risk + cfg.w_rel * n
                else:
                    risk = risk + cfg.w_se_nll * n
                    if cfg.w_gen and in_states is not None and len(states):
                        risk = risk + cfg.w_gen * losses.mmd2(in_states, states, cfg.mmd_scales, cfg.mmd_bandwidth)
            risks[kind].append(risk)
            env_risks.append(risk)
            env_parts.append(parts)
        total = sum(torch.stack(v).mean() for v in risks.values() if v)
        stats = {f"risk_{k.lower()}": torch.stack(v).mean().item() for k, v in risks.items() if v}
        stats["fit"] = fits[0] if cfg.stop_on == "in" else max(fits)  # fits[0] is IN
        if tv_on and len(env_risks) > 1:
            penalty = self._risk_slopes(env_risks, env_parts, w).abs().mean().pow(2)
            if self._dual_pending:  # the risks now are those at phi^{k+1}: Eq. 13's dual step
                self._dual_ascent(penalty.detach().item())
            lam = (self.lambda_net(self.params).detach().item()  # the primal step treats lambda as fixed
                   if self.lambda_net is not None else cfg.lambda_init)
            total = total + lam * penalty
            stats.update(tv_penalty=penalty.item(), lam=lam)
        self.step_index += 1
        return total, stats

    @staticmethod
    def _risk_slopes(env_risks: list[torch.Tensor], env_parts: list[list],
                     w: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """dR_e/dw for every environment, differentiable (the penalty is trained through)."""
        if not isinstance(w, dict):
            return torch.stack([torch.autograd.grad(r, w, create_graph=True)[0] for r in env_risks])
        groups = list(w)
        grads = torch.autograd.grad(sum(env_risks), [w[g] for g in groups], create_graph=True, allow_unused=True)
        by_group = {g: (gr if gr is not None else torch.zeros_like(w[g])).flatten()
                    for g, gr in zip(groups, grads)}
        return torch.stack([sum(by_group[er.group][er.rows].sum() for er in parts) for parts in env_parts])

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
