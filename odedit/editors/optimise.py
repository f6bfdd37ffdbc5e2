"""The optimisation loop of one edit: a base editor's parameters, driven either by the base
editor's own loss (target NLL on the edit prompt, as FT-L/LoRA in EasyEdit) or by ODEdit's
objective. Produces the edit's delta; a non-finite loss restores the base and raises."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from odedit.config import EditConfig
from odedit.delta import AppliedDelta, Delta, delta_from, snapshot
from odedit.editors import losses
from odedit.editors.env_batch import EnvBatch
from odedit.editors.odedit import ODEditObjective
from odedit.editors.readout import ReadOut
from odedit.editors.registry import BASE_EDITORS
from odedit.environments import Environment, EnvironmentSet
from odedit.models.adapter import MLLMAdapter, Sample


class EditDiverged(RuntimeError):
    """The optimisation produced a non-finite loss; the model was restored."""


@dataclass
class EditOutcome:
    delta: Delta
    restore: AppliedDelta  # the weights before the edit: remove_delta(model, restore) undoes it
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimisation step
    # (sample, keys) of the IN and SE rows at the edited projection, from the edit's own batch
    # (`EnvBatch.keys_of`; None where it has none or no key bank needs them, `null_space` off):
    # what a key bank adds once the edit lands
    keys: list | None = None


class PlainObjective:
    """The base editor's own edit loss: target NLL on the IN environment (plus, in lifelong
    mode, the replayed earlier edits' target NLL on the KEEP environment)."""

    def __init__(self, adapter: MLLMAdapter, batch: EnvBatch, w_replay: float = 1.0):
        self.adapter, self.batch, self.w_replay = adapter, batch, w_replay
        # the answer positions only, one row each (`ReadOut`); per kind the mean over its rows
        # of each row's mean NLL, and per KEEP row its NLL (the batch is fixed for the objective's life)
        self._readout = ReadOut.of(batch.encoded, {g: losses.read_positions(enc.labels)
                                                   for g, enc in batch.encoded.items()})
        ro, dev = self._readout, adapter.device
        rows = {kind: [r for er in batch.rows if er.env.kind == kind for r in ro.global_rows(er.group, er.rows.tolist())]
                for kind in ("IN", "KEEP")}
        parts = [{r: 1.0 / len(rows["IN"]) for r in rows["IN"]}] + [{r: 1.0} for r in rows["KEEP"]]
        w = torch.tensor(ro.spread(parts, ro.row_weights(ro.answer)), device=dev).reshape(len(parts), ro.size)
        self._in, self._keep = w[0], (w[1:] if rows["KEEP"] else None)

    def __call__(self):
        logits = ReadOut.cat(self.batch.forward(self.adapter, positions=self._readout.read))[1]
        tok = torch.nn.functional.cross_entropy(logits, self._readout.targets, reduction="none")
        fit = self._in @ tok
        loss = fit
        stats = {"fit": fit.item()}
        if self._keep is not None:
            keep = self._keep @ tok
            loss = loss + self.w_replay * keep.mean()
            stats["fit"] = max(stats["fit"], keep.max().item())
        return loss, stats

    def dual_step(self) -> None:
        pass


def stalled(stats: Sequence[dict], window: int, tol: float) -> bool:
    """The fit improved by less than `tol` (relative) over the last `window` steps (0: never)."""
    if window <= 0 or len(stats) <= window:
        return False
    then, now = stats[-1 - window]["fit"], stats[-1]["fit"]
    return now > (1.0 - tol) * then


def optimise_edit(adapter: MLLMAdapter, envset: EnvironmentSet, config: EditConfig,
                  fault: str | None = None, keep: Sequence[Sample] = (),
                  projection: torch.Tensor | None = None, soft_metric: torch.Tensor | None = None) -> EditOutcome:
    """Run one edit in place on `adapter.model`; returns its delta relative to the weights
    the model had before. `fault="nan"` injects a non-finite loss (fault-injection tests).

    Lifelong options (`config.base`): `keep` are earlier edits whose targets must hold; up to
    `replay` of them join the objective as a KEEP environment. `projection` (a null-space
    projector from `nullspace.KeyBank`) confines the update to keys outside the preserved span;
    `soft_metric` (`KeyBank.soft_metric`) steers it away from the soft set's keys."""
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    editor = BASE_EDITORS[config.base_method](adapter, config.base)
    originals = snapshot(adapter.model, editor.edited_parameter_names())
    editor.constrain_to(projection, soft_metric)
    params = editor.begin()
    envs = envset.train if config.uses_odedit else [envset.env("IN")]
    if keep and config.base.replay > 0:
        rng = random.Random(f"{config.seed}:{envset.request_hash}:keep")
        envs = envs + [Environment("KEEP", "KEEP", rng.sample(list(keep), min(len(keep), config.base.replay)))]
    try:
        batch = EnvBatch(adapter, envs, with_eos=config.base.with_eos,
                         prefix_layer=editor.layer if config.base.cache_prefix else None,
                         inside=editor.only_mlp_output)
        objective = (ODEditObjective(adapter, batch, params, config.odedit, config.seed, config.base.w_replay)
                     if config.uses_odedit else PlainObjective(adapter, batch, config.base.w_replay))
        if config.base.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=config.base.lr, momentum=config.base.momentum)
        else:
            opt = torch.optim.Adam(params, lr=config.base.lr)
        history, stats, step_seconds = [], [], []
        steps = 0
        for steps in range(1, config.base.steps + 1):
            t_step = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss, st = objective()
            if fault == "nan":
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                raise EditDiverged(f"non-finite loss at step {steps} (request {envset.request_id})")
            loss.backward()
            editor.pull()
            opt.step()
            editor.after_step()
            objective.dual_step()
            history.append(loss.item())
            stats.append(st)
            step_seconds.append(time.perf_counter() - t_step)
            if config.base.early_stop_loss is not None and st["fit"] < config.base.early_stop_loss:
                break
            if stalled(stats, config.base.stall_steps, config.base.stall_tol):
                break
    except BaseException:
        editor.abort()
        raise
    editor.end()
    meta = {"request_id": envset.request_id, "request_hash": envset.request_hash,
            "method": config.method, "steps": steps}
    delta = delta_from(adapter.model, originals, meta)
    return EditOutcome(delta, AppliedDelta(originals), steps, time.perf_counter() - start, history, stats,
                       step_seconds, batch.keys_of(("IN", "SE")) if config.base.null_space else None)
