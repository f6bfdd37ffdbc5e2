"""Scratch: lifelong editing on the embedded model, 5 batches x 20 world edits, scored after
every batch on the final model. Used to choose the editing capability (issue Lifelong)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

torch.set_num_threads(1)

from odedit.config import EditConfig
from odedit.editing import Kept, run_edits
from odedit import evaluate
from odedit.environments import load_image
from odedit.metrics import token_accuracy, locality_agreement
from odedit.models.adapter import MLLMAdapter, Sample
from odedit.models.embedded import default_model_path
from odedit.models.world import FACT_ATTRIBUTES, IMAGE_KINDS, TEXT_KINDS
from odedit.pools import POOL_SIZE, world_of, world_preservation


def labeller(world):
    table = {}
    for kind in IMAGE_KINDS:
        for ph in world.phrasings(kind, True) + world.phrasings(kind, True, heldout=True):
            table[(ph.prompt(), True)] = kind
    for kind in TEXT_KINDS:
        for ph in world.phrasings(kind, False) + world.phrasings(kind, False, heldout=True):
            for e in world.entities:
                table[(ph.prompt(e.name), False)] = (e.name, kind)
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="odedit-ft-l")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="section.key=value")
    ap.add_argument("--out", default="/tmp/lifelong")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--pres", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = default_model_path()
    adapter = MLLMAdapter.load(path, device="cpu")
    torch.set_num_threads(1)
    world = world_of(path)
    labels = labeller(world)
    cfg = EditConfig(method=a.method, seed=a.seed)
    for kv in a.set:
        k, v = kv.split("=", 1)
        sec, key = k.split(".")
        obj = getattr(cfg, sec)
        cur = getattr(obj, key)
        setattr(obj, key, type(cur)(v) if cur is not None and not isinstance(cur, bool) else (v.lower() in ("1", "true") if isinstance(cur, bool) else (float(v) if v.replace('.', '').isdigit() else v)))
    img_root = out / "images"
    # fixed probes (like the gate's), labelled
    from odedit.lifecycle.gate import world_probes
    probes = world_probes(world, img_root / "probes")
    def probe_sample(p):
        return Sample(p.prompt, "x", load_image(p.image, img_root / "probes") if p.image else None)
    def probe_label(p):
        if p.image:
            return (p.subject, labels[(p.prompt, True)])
        return labels[(p.prompt, False)]
    base_probe_ans = {p.id: adapter.answer(p.prompt, probe_sample(p).image, 4) for p in probes}

    batches = [world.demo_requests(a.size, img_root / f"b{k}", seed=1000 * a.seed + k + 1) for k in range(a.batches)]
    pool = lambda req: world.locality_pool(POOL_SIZE, req.subject or "", seed=a.seed)
    # base logits for loc probes of every request
    def fact_of(req):
        attr = req.reason.split("the ")[1].split(" of")[0]
        return (req.subject, attr)
    preserve = world_preservation(world, a.pres, a.pres)
    live = {}  # fact -> (req, root)
    edited_facts = set()
    base_loc = {}
    rows = []
    t_edit = 0.0
    n_edit = 0
    for k, batch in enumerate(batches):
        root = img_root / f"b{k}"
        for r in batch:
            t = [Sample(q, ans) for q, ans in zip(r.loc, r.loc_ans)]
            m = [Sample(q, ans, load_image(p, root)) for p, q, ans in zip(r.m_loc, r.m_loc_q, r.m_loc_a)]
            base_loc[r.id] = (t, evaluate.probe_logits(adapter, t) if t else None,
                              m, evaluate.probe_logits(adapter, m) if m else None,
                              [labels[(q, False)] for q in r.loc],
                              [(p.split("_v")[0], labels[(q, True)]) for p, q in zip(r.m_loc, r.m_loc_q)])
        keep = [Kept(Sample(req.src, req.alt, load_image(req.image, rt)), req.subject, req.pred) for req, rt in live.values()]
        t0 = time.perf_counter()
        run = run_edits(adapter, batch, root, cfg, pool, sequential=True, keep=keep, preserve=preserve)
        t_edit += time.perf_counter() - t0
        n_edit += len(batch)
        for r in batch:
            rec = next(x for x in run.records if x.request_id == r.id)
            if a.debug:
                print("  rec", r.id, fact_of(r), "sup" if fact_of(r) in live else "new", rec.answer_before, r.pred, rec.steps, round(rec.seconds, 2), flush=True)
            if rec.status == "ok":
                live[fact_of(r)] = (r, root)
                edited_facts.add(fact_of(r))
        # score on final model
        rel, mgen, tgen, tloc, mloc = [], [], [], [], []
        with torch.no_grad():
            for req, rt in live.values():
                s = Sample(req.src, req.alt, load_image(req.image, rt))
                rel.append(evaluate.accuracy(adapter, [s]))
                ms = [Sample(req.src, req.alt, load_image(p, rt)) for p in req.image_rephrase]
                if ms:
                    mgen.append(evaluate.accuracy(adapter, ms))
                ts = [Sample(q, req.alt, load_image(req.image, rt)) for q in req.rephrase]
                if ts:
                    tgen.append(evaluate.accuracy(adapter, ts))
                t, tl, m, ml, tlab, mlab = base_loc[req.id]
                if t:
                    post = evaluate.probe_logits(adapter, t)
                    agr = locality_agreement(tl.logits, post.logits, tl.labels, 1).tolist()
                    agr = [x for x, lab in zip(agr, tlab) if lab not in edited_facts]
                    if agr:
                        tloc.append(sum(agr) / len(agr))
                if m:
                    post = evaluate.probe_logits(adapter, m)
                    agr = locality_agreement(ml.logits, post.logits, ml.labels, 10).tolist()
                    agr = [x for x, lab in zip(agr, mlab) if lab not in edited_facts]
                    if agr:
                        mloc.append(sum(agr) / len(agr))
            changed = checked = 0
            for p in probes:
                if probe_label(p) in edited_facts:
                    continue
                checked += 1
                changed += adapter.answer(p.prompt, probe_sample(p).image, 4) != base_probe_ans[p.id]
        mean = lambda xs: round(100 * sum(xs) / len(xs), 1) if xs else None
        row = {"batch": k + 1, "edits": n_edit, "live": len(live), "retention": mean(rel), "t_gen": mean(tgen),
               "m_gen": mean(mgen), "t_loc": mean(tloc), "m_loc": mean(mloc),
               "regression": round(100 * changed / max(checked, 1), 1), "checked": checked,
               "s_per_edit": round(t_edit / n_edit, 2), "failed": sum(r.status != "ok" for r in run.records)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    (out / "rows.json").write_text(json.dumps({"method": a.method, "set": a.set, "rows": rows}))


if __name__ == "__main__":
    main()
