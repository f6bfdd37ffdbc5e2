"""ODEdit (Su et al., arXiv 2601.19700) as a wrapper objective over any base editor.

G = R_rel(IN) + mean_SE R_gen + mean_OUT R_loc + lambda(delta, phi_e) * (mean_e |dR_e/dw|)^2

  R_rel   -log p(y_e | m_e, x_e) on IN                                   (PAPER Eq. 2)
  R_gen   squared multi-scale-Gaussian MMD between last hidden states of IN and of each SE
          environment (PAPER Eq. 4-6), plus the target NLL on SE (w_se_nll, INFERRED)
  R_loc   KL(post || pre) on each OUT environment                        (PAPER Eq. 3)
  w       IRMv1-style dummy scalar multiplying the last hidden state before the LM head
          (INFERRED placement), so every risk is a function of w
  penalty total variation (TV-l1) of the environment risks w.r.t. w: (mean_e |dR_e/dw|)^2,
          taken ACROSS ENVIRONMENTS (PAPER Eq. 9, after IRM-TV, Lai & Wang 2024)
  lambda  a small network Linear-ReLU-Linear-Softplus over a fixed random projection of the
          edit's parameter change (INFERRED compression); updated by dual ASCENT
          (PAPER Eq. 13), annealed in after `tv_warmup_steps` and clamped to [0, lambda_max]
"""

from __future__ import annotations

import math

import torch

from odedit.config import ODEditConfig
from odedit.editors import losses
from odedit.editors.env_batch import EnvBatch
from odedit.models.adapter import MLLMAdapter


class LambdaNet(torch.nn.Module):
    """lambda(delta, phi_e) >= 0 from a compressed view of the edit's parameter change."""

    def __init__(self, params: list[torch.nn.Parameter], config: ODEditConfig, seed: int):
        super().__init__()
        self.config = config
        self.origin = [p.detach().clone() for p in params]
        gen = torch.Generator().manual_seed(seed)
        n = sum(p.numel() for p in params)
        # Fixed random projection R^n -> R^k (INFERRED), scaled to keep features O(|delta|).
        self._proj = torch.randn(n, config.lambda_features, generator=gen) / math.sqrt(n)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(config.lambda_features, config.lambda_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(config.lambda_hidden, 1),
        )
        with torch.no_grad():  # start at lambda_init
            self.net[2].weight.mul_(0.01)
            self.net[2].bias.fill_(math.log(math.expm1(max(config.lambda_init, 1e-4))))

    def forward(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        delta = torch.cat([(p.detach() - o).flatten().float().cpu() for p, o in zip(params, self.origin)])
        features = delta @ self._proj  # detached from phi_e (INFERRED: lambda is the dual variable)
        lam = torch.nn.functional.softplus(self.net(features)).squeeze()
        return lam.clamp(max=self.config.lambda_max)


class ODEditObjective:
    """Computes G for one optimisation step and owns the dual (lambda) update."""

    def __init__(self, adapter: MLLMAdapter, batch: EnvBatch, params, config: ODEditConfig, seed: int,
                 w_replay: float = 1.0):
        self.adapter, self.batch, self.params, self.config = adapter, batch, params, config
        self.w_replay = w_replay
        with torch.no_grad():  # pre-edit distributions for the OUT environments, computed once
            self.pre_logits = {g: l.detach() for g, (_, l) in batch.forward(adapter).items()}
        self.lambda_net = LambdaNet(params, config, seed)
        self.dual_opt = torch.optim.SGD(self.lambda_net.parameters(), lr=config.lambda_lr, maximize=True)
        self.step_index = 0

    def _states(self, hidden: torch.Tensor, group: str, rows: torch.Tensor) -> torch.Tensor:
        """Last hidden states used as MMD samples: answer positions, or the real prompt tokens."""
        enc = self.batch.encoded[group]
        answer = losses.answer_mask(enc.labels[rows])
        if self.config.mmd_positions == "answer":
            mask = answer
        else:
            mask = enc.inputs["attention_mask"][rows][:, :-1].bool() & ~answer
        return hidden[rows][:, :-1][mask]

    def __call__(self) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        w = torch.ones((), device=self.adapter.device, requires_grad=True)
        out = self.batch.forward(self.adapter, scale=w)
        labels = {g: enc.labels for g, enc in self.batch.encoded.items()}
        in_states = None
        risks: dict[str, list[torch.Tensor]] = {"IN": [], "SE": [], "OUT": [], "KEEP": []}
        env_risks: list[torch.Tensor] = []
        fits: list[float] = []  # target NLL of IN and SE environments (early-stop criterion)
        by_env: dict[str, list] = {}
        for er in self.batch.rows:
            by_env.setdefault(er.env.name, []).append(er)
        # IN first: its hidden states are the reference sample for every SE environment.
        for name, parts in sorted(by_env.items(), key=lambda kv: kv[0] != "IN"):
            kind = parts[0].env.kind
            risk = torch.zeros((), device=self.adapter.device)
            for er in parts:
                hidden, logits = out[er.group]
                lab = labels[er.group]
                if kind == "OUT":
                    k = losses.kl(logits[er.rows], self.pre_logits[er.group][er.rows], lab[er.rows],
                                  cfg.kl_direction, cfg.kl_positions,
                                  self.batch.encoded[er.group].inputs["attention_mask"][er.rows])
                    risk = risk + cfg.w_loc * k.mean()
                    continue
                if kind == "KEEP":  # lifelong replay (PRODUCT): earlier edits keep their targets
                    per = losses.nll(logits[er.rows], lab[er.rows], cfg.nll_reduction)
                    fits.append(per.max().item())
                    risk = risk + self.w_replay * per.mean()
                    continue
                n = losses.nll(logits[er.rows], lab[er.rows], cfg.nll_reduction).mean()
                fits.append(n.item())
                states = self._states(hidden, er.group, er.rows)
                if kind == "IN":
                    in_states = states
                    risk = risk + cfg.w_rel * n
                else:
                    risk = risk + cfg.w_se_nll * n
                    if cfg.w_gen and in_states is not None and len(states):
                        risk = risk + cfg.w_gen * losses.mmd2(in_states, states, cfg.mmd_scales, cfg.mmd_bandwidth)
            risks[kind].append(risk)
            env_risks.append(risk)
        total = sum(torch.stack(v).mean() for v in risks.values() if v)
        stats = {f"risk_{k.lower()}": torch.stack(v).mean().item() for k, v in risks.items() if v}
        stats["fit"] = fits[0] if cfg.stop_on == "in" else max(fits)  # fits[0] is IN
        if cfg.tv and self.step_index >= cfg.tv_warmup_steps and len(env_risks) > 1:
            grads = [torch.autograd.grad(r, w, create_graph=True)[0] for r in env_risks]
            penalty = torch.stack([g.abs() for g in grads]).mean().pow(2)
            lam = self.lambda_net(self.params)
            total = total + lam * penalty
            stats.update(tv_penalty=penalty.item(), lam=lam.item())
        self.step_index += 1
        return total, stats

    def dual_step(self) -> None:
        """Ascent on the lambda network's parameters (after the primal step's backward)."""
        if any(p.grad is not None for p in self.lambda_net.parameters()):
            self.dual_opt.step()
            self.dual_opt.zero_grad(set_to_none=True)
