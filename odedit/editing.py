"""Running edits end to end without any orchestrator: environments -> baseline -> optimise ->
score, for single edits (each on the unedited model) or sequential edits (T edits applied one
after another, with retention of earlier edits measured after the last one)."""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from odedit import evaluate
from odedit.config import EditConfig
from odedit.delta import Delta, remove_delta
from odedit.editors.optimise import EditDiverged, optimise_edit
from odedit.environments import build_environments, request_hash
from odedit.metrics import EditScores, aggregate, retention, tagged, token_accuracy
from odedit.models.adapter import MLLMAdapter, Sample
from schemas.request import EditRequest


@dataclass
class EditRecord:
    request_id: str
    request_hash: str
    method: str
    status: str  # "ok" | "unreached" (below min_reliability: not applied) | "diverged" | "error"
    target: str
    answer_before: str | None = None
    answer_after: str | None = None
    pre: EditScores | None = None
    post: EditScores | None = None
    steps: int = 0
    seconds: float = 0.0
    delta_bytes: int = 0
    error: str | None = None
    # per optimisation step: "loss" (the objective) and, for ODEdit, "lam" (the dual variable
    # lambda, PAPER Eq. 13) and "tv_penalty" once the penalty is on (None before)
    trajectory: dict[str, list[float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pre"] = self.pre.to_dict() if self.pre else None
        d["post"] = self.post.to_dict() if self.post else None
        return d


@dataclass(frozen=True)
class Kept:
    """An earlier edit that must keep holding: its reliability sample, its subject and the
    answer it replaced (that old fact is no longer knowledge to preserve). `soft`: knowledge the
    update is only steered away from (`BaseEditorConfig.soft_decay`), not projected out of."""

    sample: Sample
    subject: str | None = None
    replaced: str | None = None
    soft: bool = False
    stable: bool = False  # the same knowledge every batch (a world's preservation set): keys cacheable


TRAJECTORY_KEYS = ("lam", "tv_penalty")


def trajectory(losses: Sequence[float], stats: Sequence[dict]) -> dict[str, list[float | None]]:
    """The per-step series an edit records: its loss, and lambda / the TV penalty where ODEdit
    computed them (None on the warm-up steps before the penalty is on)."""
    out: dict[str, list[float | None]] = {"loss": [float(x) for x in losses]}
    for key in TRAJECTORY_KEYS:
        if any(key in st for st in stats):
            out[key] = [st.get(key) for st in stats]
    return out


def subject_of(request: EditRequest) -> str:
    """The subject an edit is about; a request without one is its own subject."""
    return request.subject or f"request:{request.id}"


def keep_for(request: EditRequest, kept: Sequence[Kept], current: str | None) -> list[Sample]:
    """The earlier edits a new edit must not disturb: all but the one it supersedes on purpose
    (same subject, and its target is the answer this edit replaces); the gate re-checks them."""
    from odedit.editors.nullspace import fact_key

    replaced = fact_key(subject_of(request), current)
    return [k.sample for k in kept if fact_key(k.subject, k.sample.target) != replaced]


@dataclass
class EditRun:
    config: EditConfig
    sequential: bool
    records: list[EditRecord] = field(default_factory=list)
    deltas: dict[str, Delta] = field(default_factory=dict)  # request id -> its delta
    retention: float | None = None  # sequential only: reliability of every edit after the last

    def summary(self) -> dict:
        ok = [r for r in self.records if r.status == "ok"]
        out = {"edits": len(self.records), "ok": len(ok)}
        out.update({f"pre.{k}": v for k, v in aggregate([r.pre for r in ok if r.pre]).items()})
        post = aggregate([r.post for r in ok if r.post])
        out.update({f"post.{k}": v for k, v in post.items()})
        # the same means under protocol-tagged names (MLflow-safe: "post.t_locality/easyedit")
        out.update(tagged(post, sep="/", prefix="post."))
        out["seconds_per_edit"] = sum(r.seconds for r in ok) / len(ok) if ok else None
        out["retention"] = self.retention
        return out


def run_edits(
    adapter: MLLMAdapter,
    requests: Sequence[EditRequest],
    image_root: str | Path | None,
    config: EditConfig,
    locality_pool: Sequence[Sample] | Callable[[EditRequest], Sequence[Sample]] = (),
    sequential: bool = False,
    on_record: Callable[[EditRecord], None] | None = None,
    fault: dict[str, str] | None = None,
    keep: Sequence[Kept] = (),
    preserve: Sequence[Kept] = (),
    min_reliability: float | None = None,
    key_cache: str | Path | None = None,
    baselines: Mapping[str, "evaluate.Baseline"] | None = None,
) -> EditRun:
    """Edit `adapter.model` with every request. Single mode leaves the model as it was;
    sequential mode leaves all successful edits applied (their deltas are in the run).

    `keep` are earlier edits already in the model (lifelong editing): with the lifelong options
    of `config.base` they are replayed / preserved, and in sequential mode every successful
    edit of this run joins them for the edits after it. `preserve` is knowledge whose keys the
    null-space constraint protects (`config.base.null_space`), together with `keep`.
    `min_reliability` (PRODUCT, the lifecycle passes the gate's `min_edit_reliability`): an edit whose
    reliability right after optimisation is below it did not take; it is undone and recorded
    `unreached` (left out of the candidate, pending like a diverged one), not kept to fail the
    whole batch later. `key_cache`: a folder where the key covariance of the `stable` part of
    `preserve` is kept between runs (`nullspace.KeyBank.add`). `baselines` (request id -> its
    `evaluate.Baseline` before the whole run, the lifecycle's on the champion): an edit's `pre`
    is that, and right after its optimisation only its reliability is scored (what
    `min_reliability` needs), not every held-out probe on a model in between: the scores that
    count are the final model's (PRODUCT, cost)."""
    run = EditRun(config, sequential)
    edited: list[Sample] = []
    kept = list(keep)
    bank = None
    if config.base.null_space:
        from odedit.editors.base import edited_layer
        from odedit.editors.nullspace import KeyBank

        bank = KeyBank(adapter, adapter.mlp_module(edited_layer(adapter, config.base), config.base.proj),
                       config.base.null_space_tol)
        for part, cache in (([k for k in preserve if k.stable], key_cache),
                            ([k for k in preserve if not k.stable] + kept, None)):
            bank.add([k.sample for k in part], [k.subject for k in part], [k.soft for k in part], cache=cache)
        for k in kept:
            bank.forget(k.subject, k.replaced)
    for req in requests:
        record = EditRecord(req.id, request_hash(req), config.method, "ok", req.alt)
        try:  # everything per edit, pool and environments included: one bad edit never takes the batch down
            pool = locality_pool(req) if callable(locality_pool) else locality_pool
            envset = build_environments(req, image_root, config.odedit, pool, seed=config.seed)
            edit_sample = envset.heldout.reliability[0]
            record.answer_before = adapter.answer(edit_sample.prompt, edit_sample.image)
            given = (baselines or {}).get(req.id)
            before = None if given is not None else evaluate.baseline(adapter, envset.heldout, keep_encoded=True)
            record.pre = given.scores if given is not None else before.scores
            projection = bank.projector(subject_of(req), record.answer_before) if bank is not None else None
            soft = (bank.soft_metric(subject_of(req), record.answer_before, within=projection)
                    if bank is not None and config.base.soft_decay > 0 else None)
            outcome = optimise_edit(adapter, envset, config, fault=(fault or {}).get(req.id),
                                    keep=keep_for(req, kept, record.answer_before),
                                    projection=projection, soft_metric=soft)
            record.steps, record.seconds = outcome.steps, outcome.seconds
            record.trajectory = trajectory(outcome.losses, outcome.stats)
            record.delta_bytes = outcome.delta.nbytes
            record.post = (evaluate.score(adapter, envset.heldout, before) if before is not None
                           else evaluate.reliability_only(adapter, envset.heldout, record.pre.rel_gen_scorer))
            record.answer_after = adapter.answer(edit_sample.prompt, edit_sample.image)
            rel = record.post.reliability
            if min_reliability is not None and (rel is None or rel < min_reliability):
                remove_delta(adapter.model, outcome.restore)
                record.status = "unreached"
                record.error = (f"reliability {0.0 if rel is None else rel:.2f} < {min_reliability} after "
                                f"{outcome.steps} steps: not applied")
            elif sequential:
                run.deltas[req.id] = outcome.delta
                edited.append(edit_sample)
                kept.append(Kept(edit_sample, subject_of(req), record.answer_before))
                if bank is not None:  # later edits must not move this one (nor its other views)
                    bank.forget(subject_of(req), record.answer_before)
                    if outcome.keys is not None:  # the edit sample (IN) and its SE samples, keys from its batch
                        landed, keys = [s for s, _ in outcome.keys], [k for _, k in outcome.keys]
                    else:
                        landed = [edit_sample] + [s for e in envset.train if e.kind == "SE" for s in e.samples]
                        keys = None
                    bank.add(landed, [subject_of(req)] * len(landed), keys=keys)
            else:
                run.deltas[req.id] = outcome.delta
                remove_delta(adapter.model, outcome.restore)
        except EditDiverged as exc:
            record.status, record.error = "diverged", str(exc)
        except Exception as exc:  # recorded on the edit; the batch goes on
            record.status, record.error = "error", f"{type(exc).__name__}: {exc}"
            record.error += "\n" + traceback.format_exc(limit=3)
        run.records.append(record)
        if on_record:
            on_record(record)
    if sequential and edited:
        probe = evaluate.probe_logits(adapter, edited)
        run.retention = retention(token_accuracy(probe.logits, probe.labels).tolist())
    return run
