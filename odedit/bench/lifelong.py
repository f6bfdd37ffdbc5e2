"""`odedit bench --lifelong`: many edits in batches, each batch through the same computing path
as `odedit run-batch` (edit the champion, score the FINAL candidate, gate), the champion moving
only when the gate passes, and everything scored after every batch on the model a user would
be served (the champion), never on a state in between.

Measures, after each batch, on the champion (protocols named in `PROTOCOLS`):
  retention   reliability (EasyEdit token accuracy of the target on the edit prompt + image) of
              every live edit so far: registered, not superseded by a later edit of the same fact
  regression  share of the fixed regression probes (the gate's world probes) whose greedy answer
              differs from the base model's, leaving out probes about a fact edited on purpose
  T-Gen/M-Gen token accuracy of live edits' held-out rephrasings / held-out images
  T-Loc/M-Loc agreement with the BASE model on live edits' held-out locality probes, top-1 /
              ordered top-10 at the probe's answer positions (odedit's answer-position variant),
              leaving out probes about a fact edited on purpose

World requests only: "a fact" is (entity, attribute), known from the world's phrasings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from odedit import evaluate
from odedit.environments import load_image
from odedit.metrics import locality_agreement
from odedit.models.adapter import MLLMAdapter, Sample
from schemas.request import EditRequest

PROTOCOLS = {
    "retention": "EasyEdit token accuracy (teacher forced, target tokens) of every live edit on the champion",
    "regression": "changed greedy answers (4 tokens) of the fixed probes vs the base model, intended changes left out",
    "t_gen": "EasyEdit token accuracy on held-out rephrasings, live edits, on the champion",
    "m_gen": "EasyEdit token accuracy on held-out images, live edits, on the champion",
    "t_loc": "answer-position top-1 agreement with the base model (odedit variant), edited facts left out",
    "m_loc": "answer-position ordered top-10 agreement with the base model (odedit variant), edited facts left out",
}


@dataclass
class LifelongRow:
    method: str
    seed: int
    batch: int
    submitted: int  # edits submitted so far
    landed: int  # edits in registered batches so far
    live: int  # landed and not superseded
    gate: str  # this batch: passed | failed
    retention: float | None = None
    regression: float | None = None
    t_gen: float | None = None
    m_gen: float | None = None
    t_loc: float | None = None
    m_loc: float | None = None
    seconds_per_edit: float | None = None
    gate_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class WorldFacts:
    """Which (entity, attribute) a world prompt asks about (prompts come from known phrasings)."""

    def __init__(self, world):
        from odedit.models.world import IMAGE_KINDS, TEXT_KINDS

        self.world = world
        self.image: dict[str, str] = {}
        self.text: dict[str, tuple[str, str]] = {}
        for kind in IMAGE_KINDS:
            for ph in world.phrasings(kind, True) + world.phrasings(kind, True, heldout=True):
                self.image[ph.prompt()] = kind
        for kind in TEXT_KINDS:
            for ph in world.phrasings(kind, False) + world.phrasings(kind, False, heldout=True):
                for e in world.entities:
                    self.text[ph.prompt(e.name)] = (e.name, kind)

    def of_image(self, entity: str, prompt: str) -> tuple[str, str]:
        return entity, self.image[prompt]

    def of_text(self, prompt: str) -> tuple[str, str]:
        return self.text[prompt]

    def of_request(self, req: EditRequest) -> tuple[str, str]:
        return self.of_image(req.subject, req.src)


def _entity_of_image(path: str) -> str:
    return Path(path).name.split("_v")[0]  # World.image_filename: <name>_vNN_<style>.png


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


class LifelongScorer:
    """Scores a model on every live edit and the fixed probes, against the base model."""

    def __init__(self, base: MLLMAdapter, world, probes, probe_dir: Path):
        self.world, self.facts = world, WorldFacts(world)
        self.probes, self.probe_dir = probes, probe_dir
        self.base_answers = {p.id: base.answer(p.prompt, self._img(p), 4) for p in probes}
        self.base_loc: dict[str, tuple] = {}

    def _img(self, p):
        return load_image(p.image, self.probe_dir) if p.image else None

    def _probe_fact(self, p) -> tuple[str, str]:
        return self.facts.of_image(p.subject, p.prompt) if p.image else self.facts.of_text(p.prompt)

    def add_requests(self, base: MLLMAdapter, requests: Sequence[EditRequest], root: Path) -> None:
        """Remember the base model's logits on each request's held-out locality probes."""
        for r in requests:
            t = [Sample(q, a) for q, a in zip(r.loc, r.loc_ans)]
            m = [Sample(q, a, load_image(p, root)) for p, q, a in zip(r.m_loc, r.m_loc_q, r.m_loc_a)]
            self.base_loc[r.id] = (
                t, evaluate.probe_logits(base, t), [self.facts.of_text(q) for q in r.loc],
                m, evaluate.probe_logits(base, m),
                [self.facts.of_image(_entity_of_image(p), q) for p, q in zip(r.m_loc, r.m_loc_q)])

    @torch.no_grad()
    def score(self, model: MLLMAdapter, live: Sequence[tuple[EditRequest, Path]], edited: set) -> dict:
        rel, tgen, mgen, tloc, mloc = [], [], [], [], []
        for req, root in live:
            image = load_image(req.image, root)
            rel.append(evaluate.accuracy(model, [Sample(req.src, req.alt, image)]))
            if req.rephrase:
                tgen.append(evaluate.accuracy(model, [Sample(q, req.alt, image) for q in req.rephrase]))
            if req.image_rephrase:
                mgen.append(evaluate.accuracy(model, [Sample(req.src, req.alt, load_image(p, root))
                                                      for p in req.image_rephrase]))
            t, t_pre, t_facts, m, m_pre, m_facts = self.base_loc[req.id]
            for samples, pre, facts, k, into in ((t, t_pre, t_facts, 1, tloc), (m, m_pre, m_facts, 10, mloc)):
                if not samples:
                    continue
                post = evaluate.probe_logits(model, samples)
                agree = [a for a, f in zip(locality_agreement(pre.logits, post.logits, pre.labels, k).tolist(), facts)
                         if f not in edited]
                if agree:
                    into.append(_mean(agree))
        checked = [p for p in self.probes if self._probe_fact(p) not in edited]
        changed = sum(model.answer(p.prompt, self._img(p), 4) != self.base_answers[p.id] for p in checked)
        return {"retention": _mean(rel), "t_gen": _mean(tgen), "m_gen": _mean(mgen), "t_loc": _mean(tloc),
                "m_loc": _mean(mloc), "regression": changed / len(checked) if checked else None,
                "regression_checked": len(checked)}


# A batch step: (requests, image_root, batch index) ->
#   (gate passed, gate reasons, seconds, the model now served, ids of the edits that landed)
BatchStep = Callable[[list, Path, int], tuple[bool, list, float, MLLMAdapter, set]]


def run_lifelong(method: str, seed: int, step: BatchStep, base: MLLMAdapter, world, probes, probe_dir: Path,
                 image_dir: Path, n_batches: int = 5, batch_size: int = 20,
                 on_row: Callable[[LifelongRow], None] | None = None) -> list[LifelongRow]:
    """`n_batches` world batches of `batch_size` edits (request seeds 1000*seed + k + 1) through
    `step`, scored on the served model after every batch."""
    scorer = LifelongScorer(base, world, probes, probe_dir)
    live: dict[tuple[str, str], tuple[EditRequest, Path]] = {}
    edited: set = set()
    rows, submitted, landed, seconds = [], 0, 0, 0.0
    for k in range(n_batches):
        root = Path(image_dir) / f"seed{seed}-b{k}"
        batch = world.demo_requests(batch_size, root, seed=1000 * seed + k + 1)
        scorer.add_requests(base, batch, root)
        t0 = time.perf_counter()
        passed, reasons, _edit_s, model, landed_ids = step(batch, root, k)
        seconds += time.perf_counter() - t0
        submitted += len(batch)
        if passed:
            for r in batch:
                if r.id in landed_ids:
                    live[scorer.facts.of_request(r)] = (r, root)
                    edited.add(scorer.facts.of_request(r))
                    landed += 1
        m = scorer.score(model, list(live.values()), edited)
        row = LifelongRow(method, seed, k + 1, submitted, landed, len(live), "passed" if passed else "failed",
                          m["retention"], m["regression"], m["t_gen"], m["m_gen"], m["t_loc"], m["m_loc"],
                          seconds / submitted, list(reasons))
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def write_rows(path: Path, rows: Sequence[LifelongRow]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"protocols": PROTOCOLS, "rows": [r.to_dict() for r in rows]}, indent=2))
    return path


def registry_step(base_ref: str, cfg, probes, probe_dir: Path, gate_cfg, work: Path,
                  device: str | None = None) -> BatchStep:
    """The computing path of `odedit run-batch` + `odedit promote`, without MLflow: each batch is
    `odedit.lifecycle.batch.edit_and_gate` on the current champion (composed delta + ledger);
    a passing batch becomes the champion, a failing one leaves it as it was. The served model
    is re-loaded from the champion's composed delta, exactly as the registered pyfunc loads it."""
    from odedit.lifecycle.batch import edit_and_gate
    from odedit.lifecycle.models import load_edited

    champion = {"delta": None, "ledger": None}

    def step(batch, root, k):
        t0 = time.perf_counter()
        outcome = edit_and_gate(base_ref, champion["delta"], champion["ledger"], batch, root, cfg, probes, probe_dir,
                                gate_cfg, Path(work) / f"batch{k}", device=device, batch_id=f"b{k}",
                                parent_version=str(k + 1))
        passed = bool(outcome.verdict.passed and outcome.delta_dir)
        if passed:
            champion.update(delta=outcome.delta_dir, ledger=outcome.ledger_dir)
        seconds = time.perf_counter() - t0
        landed = {r["request_id"] for r in outcome.records if r["status"] == "ok"} if passed else set()
        return passed, list(outcome.verdict.reasons), seconds, load_edited(base_ref, champion["delta"], device), landed

    return step


def summarise(rows: Sequence[LifelongRow]) -> list[dict]:
    """Mean and std over seeds of every measure, per (method, batch)."""
    import statistics

    out = []
    keys = sorted({(r.method, r.batch) for r in rows}, key=lambda mb: ([r.method for r in rows].index(mb[0]), mb[1]))
    for method, batch in keys:
        group = [r for r in rows if r.method == method and r.batch == batch]
        entry = {"method": method, "batch": batch, "submitted": group[0].submitted, "seeds": len(group),
                 "gates_passed": sum(r.gate == "passed" for r in group)}
        for m in ("live", "retention", "regression", "t_gen", "m_gen", "t_loc", "m_loc", "seconds_per_edit"):
            vals = [getattr(r, m) for r in group if getattr(r, m) is not None]
            entry[m] = statistics.fmean(vals) if vals else None
            entry[m + "_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


PCT = ("retention", "regression", "t_gen", "m_gen", "t_loc", "m_loc")


def markdown(summary: Sequence[dict], last_only: bool = False) -> str:
    cols = ["method", "edits", "gates passed", "live", "retention", "regression", "T-Gen", "M-Gen", "T-Loc",
            "M-Loc", "s/edit"]
    last = {}
    for e in summary:
        last[e["method"]] = e
    body = []
    for e in (last.values() if last_only else summary):
        def f(m):
            v, sd = e[m], e[m + "_std"]
            if v is None:
                return "-"
            return f"{100 * v:.1f} ± {100 * sd:.1f}" if m in PCT else f"{v:.2f}"
        body.append([e["method"], str(e["submitted"]), f"{e['gates_passed']}/{e['seeds']}", f"{e['live']:.1f}",
                     *[f(m) for m in PCT], f("seconds_per_edit")])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def plot(summary: Sequence[dict], path: Path) -> Path:
    """Each measure against the number of edits submitted, one line per method (mean, +-std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharex=True)
    axes.flat[-1].axis("off")
    for ax, m in zip(axes.flat, ("live",) + PCT):
        for method in dict.fromkeys(e["method"] for e in summary):
            es = [e for e in summary if e["method"] == method and e[m] is not None]
            xs = [e["submitted"] for e in es]
            scale = 1 if m == "live" else 100
            ys = [scale * e[m] for e in es]
            sd = [scale * e[m + "_std"] for e in es]
            ax.plot(xs, ys, marker="o", label=method)
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.15)
        ax.set_title({"live": "live edits on the champion", "regression": "regression % (lower is better)"}.get(
            m, m.replace("_", "-") + " %"))
        ax.set_xlabel("edits submitted")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("lifelong editing on the served champion (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
