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
from odedit.editors.readout import ReadOut
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
    """A step's environments as weights over the positions its losses read (`ReadOut`: one row
    per read position, every group's), so that every environment's risk and slope come from one
    matrix product with the per-position terms, not a loop of small ops per environment.
    Environments in order IN first, then by name; an environment with rows in two groups
    (image, text) weighs each part by its own mean, as G sums them."""

    KINDS = ("IN", "SE", "OUT", "KEEP")

    def __init__(self, batch: EnvBatch, config: ODEditConfig, w_replay: float, device, shared: dict):
        names = sorted({er.env.name for er in batch.rows}, key=lambda n: (n != "IN", n))
        index = {n: i for i, n in enumerate(names)}
        kind_of = {er.env.name: er.env.kind for er in batch.rows}
        self.envs = names
        weight = {"IN": config.w_rel, "SE": config.w_se_nll, "KEEP": w_replay}
        # per group, the positions the losses read (the forward computes only those)
        every = config.kl_positions == "all" or (bool(config.w_gen) and config.mmd_positions == "prompt")
        self.read = {g: losses.read_positions(enc.labels, enc.inputs["attention_mask"], every)
                     for g, enc in batch.encoded.items()}
        ro = self.readout = ReadOut.of(batch.encoded, self.read)
        # per environment, {batch row: weight} in its NLL / KL risk: each part (an environment's
        # rows in one group) weighs its rows by 1 / its rows; the fits (IN / SE parts: their
        # mean target NLL; KEEP rows: their own) and the members of each environment
        nll_w, kl_w = [{} for _ in names], [{} for _ in names]
        member: list[list[int]] = [[] for _ in names]
        fits, keep, out_rows = [], [], set()
        self.in_fit: int | None = None  # row of fit_w that is IN's fit
        for er in batch.rows:
            e, kind, rows = index[er.env.name], er.env.kind, ro.global_rows(er.group, er.rows.tolist())
            member[e] += rows
            into = kl_w[e] if kind == "OUT" else nll_w[e]
            share = (config.w_loc if kind == "OUT" else weight[kind]) / len(rows)
            for r in rows:
                into[r] = into.get(r, 0.0) + share
            if kind == "OUT":
                out_rows.update(rows)
            elif kind == "KEEP":
                keep += [{r: 1.0} for r in rows]
            else:
                if kind == "IN" and self.in_fit is None:
                    self.in_fit = len(fits)
                fits.append({r: 1.0 / len(rows) for r in rows})
        # KL positions: the OUT rows' answer positions, or every real one
        at = ro.answer if config.kl_positions == "answer" else ro.real
        self.kl_at = [r in out_rows and a for r, a in zip(ro.row, at)]
        # the risks' weights over (position, term) rows, `losses.token_terms` viewed as [2N, .]:
        # [environments, 2N], the NLL at 2n (a row's NLL from its answer positions'), the KL at
        # 2n + 1; the fits' and the KEEP rows' over the NLLs, [., N]: one tensor made for all
        per_row = ro.row_weights(ro.answer, config.nll_reduction)
        w = ro.spread(kl_w, ro.row_weights(self.kl_at), 2, 1, into=ro.spread(nll_w, per_row, 2, 0))
        fit_w, keep_w = ro.spread(fits, per_row), ro.spread(keep, per_row)
        flat = torch.tensor([x for m in (w, fit_w, keep_w) for row in m for x in row], device=device)
        n_w, n_fit = len(names) * 2 * ro.size, len(fits) * ro.size
        self.w = flat[:n_w].view(len(names), 2 * ro.size)
        self.fit_w = flat[n_w:n_w + n_fit].view(len(fits), ro.size)
        self.keep_w = flat[n_w + n_fit:].view(len(keep), ro.size) if keep else None
        self.has_kl = bool(out_rows)
        self.pre_index: torch.Tensor | None = None  # per position, its row of the pre-edit table (the objective's)
        self._member = member
        self.mmd_index = None
        if config.w_gen:
            self._mmd_samples(batch, config, index, device)
        self.kinds = [k for k in self.KINDS if k in kind_of.values()]
        # G = the sum over kinds of the mean risk of that kind's environments (the same every step)
        kinds = tuple(kind_of[n] for n in names)
        if kinds not in shared:
            kind_mean = [[float(kind == k) for kind in kinds] for k in self.kinds]
            shared[kinds] = torch.tensor([[v / sum(row) for v in row] for row in kind_mean], device=device)
        self.kind_mean = shared[kinds]

    def member(self, group: str) -> torch.Tensor:
        """[environments, rows] 1 where a row of `group` is the environment's (the "rows" slope
        mode's sum)."""
        start, size = self.readout.offsets[group], self.read[group].shape[0]
        m = [[0.0] * size for _ in self._member]
        for e, rows in enumerate(self._member):
            for r in rows:
                if start <= r < start + size:
                    m[e][r - start] = 1.0
        return torch.tensor(m, dtype=torch.float32, device=self.read[group].device)

    def _mmd_samples(self, batch: EnvBatch, config: ODEditConfig, index: dict, device) -> None:
        """Which read positions' last hidden states are MMD samples (answer positions, or real
        prompt tokens): `mmd_index`, the IN part's first (the reference sample of every SE part),
        then each SE part's (groups in batch order); the SE parts' environments and sizes. An SE
        part without samples has no MMD term."""
        ro = self.readout
        sample = ro.answer if config.mmd_positions == "answer" else [r and not a for r, a in zip(ro.real, ro.answer)]
        at: dict[int, list[int]] = {}  # global row -> its sample positions
        for i, (r, x) in enumerate(zip(ro.row, sample)):
            if x:
                at.setdefault(r, []).append(i)
        in_idx, se_idx, self.se_env, self.se_sizes = None, [], [], []
        for g in batch.encoded:
            for er in batch.rows:
                if er.group != g or er.env.kind not in ("IN", "SE"):
                    continue
                idx = [i for r in ro.global_rows(g, er.rows.tolist()) for i in at.get(r, [])]
                if er.env.kind == "IN":
                    in_idx = idx
                elif idx:
                    se_idx += idx
                    self.se_env.append(index[er.env.name])
                    self.se_sizes.append(len(idx))
        self.in_size = len(in_idx or [])
        if self.in_size and self.se_sizes:
            self.mmd_index = torch.tensor(in_idx + se_idx, dtype=torch.long, device=device)
        self.se_env = torch.tensor(self.se_env, dtype=torch.long, device=device)


class ODEditObjective:
    """Computes G for one optimisation step and owns the dual (lambda) update."""

    def __init__(self, adapter: MLLMAdapter, batch: EnvBatch, params, config: ODEditConfig, seed: int,
                 w_replay: float = 1.0):
        self.adapter, self.batch, self.params, self.config = adapter, batch, params, config
        self.w_replay = w_replay
        # pre-edit next-token log-probabilities at the KL's positions (its reference), once:
        # a table with one row per such position of the whole batch and a last row of zeros (the
        # row of every other position, whose KL weighs 0), and (group, batch row, t) -> its row
        self._shared: dict = {}  # what every step's layout shares (its kinds' averaging matrix)
        self._full_layout = None
        full = self._layout(batch)
        at = [n for n, x in enumerate(full.kl_at) if x]
        self._pre_table, self._pre_slot = None, {}
        if full.has_kl:
            with torch.no_grad():
                logits = ReadOut.cat(batch.forward(adapter, positions=full.read))[1]
                self._pre_table = torch.cat([torch.log_softmax(logits[at], dim=-1),
                                             logits.new_zeros(1, logits.shape[-1])]).detach()
            where = [(g, r, t) for g, (rs, ts) in full.readout.local.items() for r, t in zip(rs, ts)]
            self._pre_slot = {where[n]: k for k, n in enumerate(at)}
            self._set_pre_index(full, None)
        # with the dual step off lambda IS lambda_init: no network, no sketch of the change per step
        # (which copies the whole edited tensor to the CPU) and no per-parameter hash memory
        self.lambda_net = LambdaNet(params, config, seed) if config.dual else None
        self.dual_opt = (torch.optim.SGD(self.lambda_net.parameters(), lr=config.lambda_lr, maximize=True)
                         if self.lambda_net is not None else None)
        self.step_index = 0
        self._dual_pending = False
        self._rng = self.row_rng(seed)

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

    def _layout(self, batch: EnvBatch, orig: dict[str, torch.Tensor] | None = None) -> "_Layout":
        """Where this step's environments sit in its rows (built once for the whole batch); `orig`
        as `_set_pre_index`'s."""
        if batch is self.batch:
            if self._full_layout is None:
                self._full_layout = _Layout(batch, self.config, self.w_replay, self.adapter.device, self._shared)
            return self._full_layout
        lay = _Layout(batch, self.config, self.w_replay, self.adapter.device, self._shared)
        self._set_pre_index(lay, orig)
        return lay

    def _set_pre_index(self, lay: "_Layout", orig: dict[str, torch.Tensor] | None) -> None:
        """Per read position of a step, its row of the pre-edit table (the last, zeros, where no
        KL reads it). `orig`: per group the batch rows a sampled view's rows are (None: the batch)."""
        if not lay.has_kl:
            return
        none, index = len(self._pre_table) - 1, []
        for g, (rs, ts) in lay.readout.local.items():
            back = orig[g].tolist() if orig is not None else None
            index += [self._pre_slot.get((g, r if back is None else back[r], t), none) for r, t in zip(rs, ts)]
        lay.pre_index = torch.tensor(index, dtype=torch.long, device=self._pre_table.device)

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
        lay = self._layout(batch, orig)
        mode = self._slope_mode(batch, cfg.tv and self.step_index >= cfg.tv_warmup_steps and len(batch.rows) > 1)
        dev = self.adapter.device
        if mode == "rows":
            w = {g: torch.ones(enc.size, 1, 1, device=dev, requires_grad=True) for g, enc in batch.encoded.items()}
        elif mode == "loop":
            w = torch.ones((), device=dev, requires_grad=True)
        else:
            w = None
        # last hidden states and logits at the read positions only, one row each (`ReadOut`)
        hidden, logits = ReadOut.cat(batch.forward(self.adapter, scale=w, raw=mode == "rows", positions=lay.read))
        bias = self.adapter.model.get_output_embeddings().bias if mode == "closed" else None
        bias = None if bias is None else bias.detach().float()
        pre = self._pre_table.index_select(0, lay.pre_index) if lay.pre_index is not None else None
        terms = losses.token_terms(logits, lay.readout.targets, pre, cfg.kl_direction, bias, slope=mode == "closed")
        # every environment's risk (IN / SE / KEEP rows: target NLL; OUT rows: KL to the
        # pre-edit distributions) and, in closed form, its slope: one product
        weighted = lay.w @ terms.view(2 * lay.readout.size, -1)
        risks = weighted[:, 0]
        slopes = weighted[:, 1] if mode == "closed" else None
        if lay.mmd_index is not None:
            # MMD samples: last hidden states at the answer (or prompt) positions, IN's first;
            # differentiated once (the penalty's own grads never pass through it, bar "loop")
            mmd = losses.mmd2_pooled(hidden.index_select(0, lay.mmd_index), lay.in_size, lay.se_sizes,
                                     cfg.mmd_scales, cfg.mmd_bandwidth, once=mode != "loop")
            risks = risks.index_add(0, lay.se_env, cfg.w_gen * mmd)
        by_kind = lay.kind_mean @ risks
        total = by_kind.sum()
        stats = {f"risk_{k.lower()}": v for k, v in zip(lay.kinds, by_kind.detach().tolist())}
        # the early-stop criterion: per IN / SE part its mean target NLL, per KEEP row its NLL
        nll = terms[:, 0].detach()
        fits = lay.fit_w @ nll
        if cfg.stop_on == "in" and lay.in_fit is not None:
            stats["fit"] = fits[lay.in_fit].item()
        else:
            keep = lay.keep_w @ nll if lay.keep_w is not None else fits[:0]
            stats["fit"] = torch.cat([fits, keep]).max().item()
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
