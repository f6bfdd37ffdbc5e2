"""Running benchmark cells and measuring them: quality (EasyEdit metrics from the held-out
probes), retention, time, optimisation steps, peak memory, delta size; plus the editor's
performance probes (`perf`) and a profile of one edit (`profile_edit`).

Plain functions; no CLI, no MLflow here.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from odedit import evaluate
from odedit.bench.grid import Grid, MethodSpec
from odedit.config import EditConfig
from odedit.bench import stress as stress_mod
from odedit.delta import AppliedDelta, apply_delta, remove_delta, snapshot
from odedit.editing import run_edits
from odedit.editors.registry import BASE_EDITORS
from odedit.environments import HeldOut, build_environments
from odedit.metrics import EditScores, locality_easyedit, token_accuracy
from odedit.models.adapter import MLLMAdapter, Sample
from schemas.request import EditRequest

METRICS = ("reliability", "t_generality", "m_generality", "t_locality", "m_locality")  # locality: protocol answer
EASYEDIT_METRICS = ("t_locality_easyedit", "m_locality_easyedit")  # locality: protocol easyedit


# ----------------------------------------------------------------------------- memory
def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


class PeakMemory:
    """Peak memory of a block. CUDA: `torch.cuda.max_memory_allocated` (after a reset). CPU:
    the kernel's resident high-water mark VmHWM, reset by writing 5 to /proc/self/clear_refs
    (exact); where that is not allowed, RSS sampled every `interval` s in a thread.

    `peak` is the absolute peak (bytes); `extra` = peak - the level when the block began,
    i.e. what the block itself added (the process's own baseline, ~0.5 GB of torch, excluded)."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.start = self.peak = 0
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda.max_memory_allocated"
        elif _can_reset_hwm():
            self.start = _rss()
            self.method = "VmHWM"
        else:
            self.start = self.peak = _rss()
            self.method = "rss-sampled"
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.method.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "VmHWM":
            self.peak = max(_hwm(), self.start)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())
        return False

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.start)


class TensorMemory:
    """Peak bytes of tensor storage allocated inside the block and still alive, on any device,
    tracked exactly by a TorchDispatchMode (every op output's storage, freed via weakref
    finalizers). Unlike RSS it does not depend on what the allocator kept from earlier work,
    so it compares two blocks fairly; it slows ops down, so never time inside it."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type != "meta":
                        tracker._track(t)
                return out

        self._mode = _Mode()
        self.live = self.peak = 0
        self._seen: dict[int, int] = {}

    def _track(self, t: torch.Tensor) -> None:
        import weakref

        st = t.untyped_storage()
        key = id(st)
        if key in self._seen:
            return
        n = st.nbytes()
        self._seen[key] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.live -= n

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self._seen.clear()  # storages freed later are not this block's business
        return False

    @property
    def extra(self) -> int:
        return self.peak


# ----------------------------------------------------------------------------- requests
def load_requests(n: int, seed: int, image_dir: str | Path, data: str | Path | None = None,
                  world=None) -> tuple[list[EditRequest], Path]:
    """(requests, image_root): `n` requests for one seed. From an MMEdit-format / JSONL / batch
    file (`data`, a seeded sample of its valid rows), else generated from `world`."""
    if data is not None:
        import random

        from pydantic import ValidationError

        from odedit.requests.io import read_batch

        good = []
        for row in read_batch(data):
            try:
                good.append(EditRequest.model_validate(row.payload))
            except (ValidationError, TypeError):
                continue
        if not good:
            raise ValueError(f"{data}: no valid edit request")
        rng = random.Random(seed)
        picked = rng.sample(good, min(n, len(good)))
        return picked, Path(image_dir)
    if world is None:
        raise ValueError("no data file and no world to generate requests from")
    root = Path(image_dir) / f"seed{seed}"
    return world.demo_requests(n, root, seed=seed), root


# ----------------------------------------------------------------------------- cells
@dataclass
class Row:
    """One cell of the grid for one seed: a method, a mode and a sequential length T."""

    method: str
    seed: int
    mode: str  # "single" | "sequential"
    T: int
    edits: int
    ok: int
    reliability: float | None = None
    t_generality: float | None = None
    m_generality: float | None = None
    t_locality: float | None = None
    m_locality: float | None = None
    t_locality_easyedit: float | None = None  # EasyEdit's whole-sequence protocol (odedit.metrics)
    m_locality_easyedit: float | None = None
    retention: float | None = None  # sequential: reliability of all T edits after the T-th
    seconds_per_edit: float | None = None
    steps: float | None = None
    peak_mem_mb: float | None = None  # memory added above the level at the start (see PeakMemory)
    delta_kb: float | None = None
    # stress splits (odedit.bench.stress; world requests, weight editors): split -> mean over edits
    stress: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(statistics.fmean(xs)) if xs else None


def _fill_scores(row: Row, scores: Sequence[EditScores]) -> None:
    for m in METRICS + EASYEDIT_METRICS:
        setattr(row, m, _mean(getattr(s, m) for s in scores))


def _restore_point(adapter: MLLMAdapter, cfg: EditConfig) -> AppliedDelta:
    names = BASE_EDITORS[cfg.base_method](adapter, cfg.base).edited_parameter_names()
    return AppliedDelta(snapshot(adapter.model, names))


def run_method(adapter: MLLMAdapter, spec: MethodSpec, seed: int, requests: Sequence[EditRequest],
               image_root: Path, pool, grid: Grid, base: EditConfig | None = None,
               on_edit: Callable[[], None] | None = None, world=None) -> list[Row]:
    """All rows of one (method, seed): single edits, then one sequential run of max(T). With the
    `world` of the model, weight editors are also scored on the stress splits (odedit.bench.stress)."""
    cfg = spec.config(seed, base)
    if spec.is_icl:
        return _run_icl(adapter, spec, seed, requests, image_root, grid, cfg, on_edit)
    probes = ([stress_mod.build(world, adapter, r, image_root, seed) for r in requests[: grid.n_requests]]
              if world is not None else [None] * grid.n_requests)
    rows: list[Row] = []
    if grid.n_single:
        reqs = list(requests[: grid.n_single])
        with PeakMemory(adapter.device) as mem:
            run = run_edits(adapter, reqs, image_root, cfg, pool, sequential=False,
                            on_record=(lambda r: on_edit()) if on_edit else None)
        row = Row(spec.name, seed, "single", 1, len(run.records), sum(r.status == "ok" for r in run.records))
        # a failed edit leaves the model unedited: it scores as before the edit
        _fill_scores(row, [r.post if r.status == "ok" else (r.pre or EditScores()) for r in run.records])
        ok = [r for r in run.records if r.status == "ok"]
        row.seconds_per_edit = _mean(r.seconds for r in ok)
        row.steps = _mean(r.steps for r in ok)
        row.delta_kb = _mean(r.delta_bytes / 1024 for r in ok)
        row.peak_mem_mb = mem.extra / 2**20
        per_edit = []
        for r, pr in zip(run.records, probes):  # each edit alone on the unedited model, as scored above
            if pr is None:
                continue
            applied = apply_delta(adapter.model, run.deltas[r.request_id]) if r.request_id in run.deltas else None
            try:
                per_edit.append(stress_mod.score(adapter, pr))
            finally:
                if applied is not None:
                    remove_delta(adapter.model, applied)
        row.stress = stress_mod.mean_scores(per_edit) if per_edit else {}
        rows.append(row)
    if grid.ts:
        rows += _run_sequential(adapter, spec, cfg, seed, requests[: max(grid.ts)], image_root, pool,
                                sorted(set(grid.ts)), on_edit, probes)
    return rows


def _run_sequential(adapter, spec, cfg, seed, requests, image_root, pool, ts, on_edit, probes=()) -> list[Row]:
    """One sequential run; after the T-th edit (T in ts) every edit so far is re-scored on
    its held-out probes (EasyEdit's sequential protocol), against pre-edit baselines."""
    held: list[HeldOut] = []
    baselines = []
    for req in requests:  # held-out probes and pre-edit baselines on the unedited model
        p = pool(req) if callable(pool) else pool
        h = build_environments(req, image_root, cfg.odedit, p, seed=cfg.seed).heldout
        held.append(h)
        baselines.append(evaluate.baseline(adapter, h))
    restore = _restore_point(adapter, cfg)
    rows: list[Row] = []
    records = []
    with PeakMemory(adapter.device) as mem:
        def checkpoint(record):
            records.append(record)
            if on_edit:
                on_edit()
            t = len(records)
            if t in ts:
                scores = [evaluate.score(adapter, held[i], baselines[i]) for i in range(t)]
                row = Row(spec.name, seed, "sequential", t, t, sum(r.status == "ok" for r in records))
                _fill_scores(row, scores)
                row.retention = row.reliability
                ok = [r for r in records if r.status == "ok"]
                row.seconds_per_edit = _mean(r.seconds for r in ok)
                row.steps = _mean(r.steps for r in ok)
                row.delta_kb = _mean(r.delta_bytes / 1024 for r in ok)
                per_edit = [stress_mod.score(adapter, pr) for pr in list(probes)[:t] if pr is not None]
                row.stress = stress_mod.mean_scores(per_edit) if per_edit else {}
                rows.append(row)

        try:
            run_edits(adapter, requests, image_root, cfg, pool, sequential=True, on_record=checkpoint)
        finally:
            remove_delta(adapter.model, restore)  # back to the unedited model
    for row in rows:
        row.peak_mem_mb = mem.extra / 2**20
    return rows


# ----------------------------------------------------------------------------- in-context baseline
def _words(text: str) -> set[str]:
    return set(text.lower().replace("?", " ").replace(":", " ").split())


def icl_context(memory: Sequence[EditRequest], prompt: str) -> str:
    """The stored fact most similar (word Jaccard) to `prompt`, as text to prepend."""
    best = max(memory, key=lambda r: len(_words(r.src) & _words(prompt)) / (len(_words(r.src) | _words(prompt)) or 1))
    return f"{best.src} {best.alt} ."


def _with_context(memory, samples: list[Sample]) -> list[Sample]:
    return [Sample(f"{icl_context(memory, s.prompt)} {s.prompt}", s.target, s.image) for s in samples]


def _aligned_agreement(pre, post, k: int) -> float | None:
    """Top-k agreement at the answer positions of pre/post batches whose prompts differ in
    length (the in-context prompt is longer): positions are matched by answer-token index."""
    if pre is None:
        return None
    vals = []
    for i in range(pre.labels.shape[0]):
        p = (pre.labels[i, 1:] != -100).nonzero().flatten()
        q = (post.labels[i, 1:] != -100).nonzero().flatten()
        a = torch.topk(pre.logits[i, :-1][p].float(), k, dim=-1).indices
        b = torch.topk(post.logits[i, :-1][q].float(), k, dim=-1).indices
        vals.append(float((a == b).float().mean()))
    return _mean(vals)


def _icl_scores(adapter, memory, held: HeldOut, before) -> EditScores:
    def acc(samples):
        return evaluate.accuracy(adapter, _with_context(memory, samples)) if samples else None

    def agree(samples, pre, k):
        if not samples or pre is None:
            return None, None
        post = evaluate.probe_logits(adapter, _with_context(memory, samples))
        easy = locality_easyedit(pre.logits, post.logits, k, pre.mask, post.mask)  # last-L aligned
        return _aligned_agreement(pre, post, min(k, pre.logits.shape[-1])), float(easy.mean())

    t_ans, t_easy = agree(held.t_loc, before.t_loc, evaluate.T_LOC_K)
    m_ans, m_easy = agree(held.m_loc, before.m_loc, evaluate.M_LOC_K)
    return EditScores(acc(held.reliability), acc(held.t_gen), acc(held.m_gen), t_ans, m_ans, t_easy, m_easy)


def _run_icl(adapter, spec, seed, requests, image_root, grid, cfg, on_edit) -> list[Row]:
    """In-context editing: no weights change; each probe gets the retrieved stored fact
    prepended (single: the edit's own fact; sequential: the nearest of the T facts)."""
    held = [build_environments(r, image_root, cfg.odedit, (), seed=seed).heldout for r in requests]
    rows = []
    if grid.n_single:
        n = min(grid.n_single, len(requests))
        with PeakMemory(adapter.device) as mem:
            t0 = time.perf_counter()
            scores = []
            for i in range(n):
                scores.append(_icl_scores(adapter, [requests[i]], held[i], evaluate.baseline(adapter, held[i])))
                if on_edit:
                    on_edit()
            elapsed = time.perf_counter() - t0
        row = Row(spec.name, seed, "single", 1, n, n, seconds_per_edit=0.0, steps=0.0, delta_kb=0.0,
                  peak_mem_mb=mem.extra / 2**20)
        _fill_scores(row, scores)
        row.seconds_per_edit = 0.0  # storing a fact costs nothing; inference cost: `elapsed`
        rows.append(row)
        del elapsed
    if grid.ts:
        baselines = [evaluate.baseline(adapter, h) for h in held[: max(grid.ts)]]
        for t in sorted(set(grid.ts)):
            mem_reqs = list(requests[:t])
            with PeakMemory(adapter.device) as mem:
                scores = [_icl_scores(adapter, mem_reqs, held[i], baselines[i]) for i in range(t)]
            row = Row(spec.name, seed, "sequential", t, t, t, seconds_per_edit=0.0, steps=0.0,
                      delta_kb=0.0, peak_mem_mb=mem.extra / 2**20)
            _fill_scores(row, scores)
            row.retention = row.reliability
            rows.append(row)
        if on_edit:
            for _ in range(max(grid.ts)):
                on_edit()
    return rows


def run_grid(adapter: MLLMAdapter, grid: Grid, requests_for_seed: Callable[[int], tuple[list, Path]],
             pool_for: Callable[[int, list, Path], object], base: EditConfig | None = None,
             on_edit: Callable[[], None] | None = None,
             on_cell: Callable[[str, int], None] | None = None,
             on_rows: Callable[[list[Row]], None] | None = None, world=None) -> list[Row]:
    """Every (method, seed) of `grid`; returns one Row per (method, seed, mode, T).
    `on_rows` gets each (method, seed)'s rows as soon as they are measured."""
    rows: list[Row] = []
    for seed in grid.seeds:
        requests, root = requests_for_seed(seed)
        pool = pool_for(seed, requests, root)
        for spec in grid.specs:
            if on_cell:
                on_cell(spec.name, seed)
            new = run_method(adapter, spec, seed, requests, root, pool, grid, base, on_edit, world)
            if on_rows:
                on_rows(new)
            rows += new
    return rows


# ----------------------------------------------------------------------------- performance
@dataclass
class PerfResult:
    method: str
    steps: int
    step_ms_median: float
    step_ms_mean: float
    setup_s: float  # environments + prefix cache + pre-edit logits (seconds - sum of steps)
    edit_s: float  # the whole optimise_edit call with the default config (early stop on)
    edit_steps: int
    forward_mb: float  # peak live tensor memory of a plain forward pass (no grad, full model), same samples
    edit_mb: float  # peak live tensor memory of the edit (everything optimise_edit allocates)
    mem_ratio: float
    forward_rss_mb: float  # the same two blocks by process RSS growth (VmHWM; allocator-dependent)
    edit_rss_mb: float
    samples: int  # rows the edit optimises on per step
    extra: dict = field(default_factory=dict)


def _envset(adapter, req, image_root, cfg, pool):
    p = pool(req) if callable(pool) else pool
    return build_environments(req, image_root, cfg.odedit, p, seed=cfg.seed)


@torch.no_grad()
def _plain_forward(adapter: MLLMAdapter, samples: list[Sample]) -> None:
    """A plain inference forward pass of the full model over the samples (per modality)."""
    for group in ([s for s in samples if s.image is not None], [s for s in samples if s.image is None]):
        if group:
            adapter.logits(adapter.encode(group))


def perf(adapter: MLLMAdapter, requests: Sequence[EditRequest], image_root: Path, pool,
         methods: Sequence[str] = ("ft-l", "odedit-ft-l"), fixed_steps: int = 20, repeats: int = 3,
         base: EditConfig | None = None) -> list[PerfResult]:
    """Per method: per-step time over `fixed_steps` steps (no early stop) on `repeats` requests,
    the default-config edit wall time, and peak memory of the edit vs a plain forward pass."""
    from odedit.bench.grid import parse_method
    from odedit.editors.optimise import optimise_edit

    torch.set_grad_enabled(True)
    out = []
    # warm-up (first-call allocations, lazy imports) so the first method timed is not penalised
    warm = parse_method("odedit-ft-l").config(0, base)
    warm.base.steps = 2
    o = optimise_edit(adapter, _envset(adapter, requests[0], image_root, warm, pool), warm)
    remove_delta(adapter.model, o.restore)
    for name in methods:
        spec = parse_method(name)
        cfg = spec.config(0, base)
        fixed = spec.config(0, base)
        fixed.base.early_stop_loss, fixed.base.steps = None, fixed_steps
        step_s, setup_s, edit_s, edit_steps, n_samples = [], [], [], [], 0
        fwd_mb, edit_mb, fwd_rss, edit_rss, same_n = [], [], [], [], 0
        same_ms, same_ratio, paired_ms = [], [], []  # the paired step measurement (paired_step_ms)
        mem_cfg = spec.config(0, base)
        mem_cfg.base.early_stop_loss, mem_cfg.base.steps = None, 3
        for req in list(requests)[:repeats]:
            env = _envset(adapter, req, image_root, cfg, pool)
            envs = env.train if cfg.uses_odedit else [env.env("IN")]
            samples = [s for e in envs for s in e.samples]
            k = cfg.odedit.env_samples if cfg.uses_odedit else 0  # rows a step (stochastic environments)
            n_samples = sum(len(e.samples) if k <= 0 or e.kind in ("IN", "KEEP") else min(k, len(e.samples))
                            for e in envs)
            meter = TensorMemory if adapter.device.type == "cpu" else (lambda: PeakMemory(adapter.device))
            with meter() as m_fwd:
                _plain_forward(adapter, samples)
            fwd_mb.append(m_fwd.extra / 2**20)
            with meter() as m_edit:  # 3 steps: the peak is reached once Adam has its state
                o = optimise_edit(adapter, env, mem_cfg)
            remove_delta(adapter.model, o.restore)
            edit_mb.append(m_edit.extra / 2**20)
            with PeakMemory(adapter.device) as m_fwd:
                _plain_forward(adapter, samples)
            fwd_rss.append(m_fwd.extra / 2**20)
            with PeakMemory(adapter.device) as m_edit:
                o = optimise_edit(adapter, env, fixed)
            remove_delta(adapter.model, o.restore)
            edit_rss.append(m_edit.extra / 2**20)
            step_s += o.step_seconds[1:]  # the first step includes one-off allocations
            setup_s.append(o.seconds - sum(o.step_seconds))
            o = optimise_edit(adapter, _envset(adapter, req, image_root, cfg, pool), cfg)
            remove_delta(adapter.model, o.restore)
            edit_s.append(o.seconds)
            edit_steps.append(o.steps)
            if cfg.uses_odedit:
                paired = paired_step_ms(adapter, env, cfg, fixed_steps)
                same_ms.append(paired["bare_ms"])
                same_ratio.append(paired["ratio"])
                paired_ms.append(paired["odedit_ms"])
                same_n = paired["rows"]
        fm, em = statistics.fmean(fwd_mb), statistics.fmean(edit_mb)
        out.append(PerfResult(
            name, fixed_steps, 1000 * statistics.median(step_s), 1000 * statistics.fmean(step_s),
            statistics.fmean(setup_s), statistics.fmean(edit_s), round(statistics.fmean(edit_steps)),
            fm, em, em / fm if fm > 0 else float("nan"), statistics.fmean(fwd_rss), statistics.fmean(edit_rss),
            n_samples,
            {"edit_s_all": edit_s, "edit_steps_all": edit_steps,
             **({"ftl_same_batch_step_ms": statistics.median(same_ms), "same_batch_samples": same_n,
                 "step_vs_bare": statistics.median(same_ratio), "paired_step_ms": statistics.median(paired_ms)}
                if same_ms else {})}))
    return out


def paired_step_ms(adapter: MLLMAdapter, env, cfg: EditConfig, steps: int) -> dict:
    """ODEdit's step against a bare FT-L step (target NLL, backward, Adam) ON THE SAME ROWS, step
    by step: each step draws ODEdit's rows (every row, or with stochastic environments its own
    draw), then times ODEdit's step on them and a bare step on them, in alternating order. What
    ODEdit's terms (MMD, KL, TV) add, with the cost of the rows taken out, and paired in time so
    that the machine's speed drifting between two separate timings cannot pass for either.
    Steps start past the TV warm-up. Returns medians of both and of the per-step ratio."""
    from odedit.editors.env_batch import EnvBatch
    from odedit.editors.odedit import ODEditObjective
    from odedit.editors.optimise import PlainObjective

    editor = BASE_EDITORS["ft-l"](adapter, cfg.base)
    params = editor.begin()
    try:
        batch = EnvBatch(adapter, env.train, with_eos=cfg.base.with_eos,
                         prefix_layer=editor.layer if cfg.base.cache_prefix else None,
                         inside=editor.only_mlp_output)
        objective = ODEditObjective(adapter, batch, params, cfg.odedit, cfg.seed, cfg.base.w_replay)
        objective.step_index = cfg.odedit.tv_warmup_steps
        draw, view = objective._step_batch, None
        objective._step_batch = lambda: view
        opts = [torch.optim.Adam(params, lr=cfg.base.lr) for _ in range(2)]
        times = ([], [])

        def run(which):
            t = time.perf_counter()
            opts[which].zero_grad(set_to_none=True)
            loss = (objective() if which == 0 else PlainObjective(adapter, view[0])())[0]
            loss.backward()
            opts[which].step()
            editor.after_step()
            if which == 0:
                objective.dual_step()  # its dual ascent runs in the next step's objective, timed there
            times[which].append(time.perf_counter() - t)

        for i in range(steps + 1):
            view = draw()
            for which in ((0, 1) if i % 2 else (1, 0)):
                run(which)
        rows = sum(e.size for e in view[0].encoded.values())
    finally:
        editor.abort()  # restores the weight
    odedit, bare = times[0][1:], times[1][1:]  # the first includes one-off allocations
    return {"odedit_ms": 1000 * statistics.median(odedit), "bare_ms": 1000 * statistics.median(bare),
            "ratio": statistics.median(o / b for o, b in zip(odedit, bare)), "rows": rows}


def profile_edit(adapter: MLLMAdapter, request: EditRequest, image_root: Path, pool,
                 method: str = "odedit-ft-l", top: int = 10, base: EditConfig | None = None) -> dict:
    """Where one edit's time goes: torch.profiler operator table (self CPU time) and cProfile
    (cumulative time of Python functions), top `top` entries each, as text."""
    from odedit.bench.grid import parse_method
    from odedit.editors.optimise import optimise_edit

    cfg = parse_method(method).config(0, base)
    env = _envset(adapter, request, image_root, cfg, pool)
    prof = cProfile.Profile()
    prof.enable()
    o = optimise_edit(adapter, env, cfg)
    prof.disable()
    remove_delta(adapter.model, o.restore)
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("cumulative").print_stats(25)
    cprof_cum = buf.getvalue()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    cprof_tot = buf.getvalue()

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if adapter.device.type == "cuda" else [])
    env = _envset(adapter, request, image_root, cfg, pool)
    with profile(activities=acts, record_shapes=False) as tp:
        o2 = optimise_edit(adapter, env, cfg)
    remove_delta(adapter.model, o2.restore)
    key = "self_cuda_time_total" if adapter.device.type == "cuda" else "self_cpu_time_total"
    table = tp.key_averages().table(sort_by=key, row_limit=top)
    return {"method": method, "edit_s": o.seconds, "steps": o.steps,
            "step_ms": [1000 * s for s in o.step_seconds], "setup_s": o.seconds - sum(o.step_seconds),
            "torch_ops": table, "cprofile_tottime": _trim_pstats(cprof_tot),
            "cprofile_cumulative": _trim_pstats(cprof_cum)}


def _trim_pstats(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip().startswith("ncalls")), 0)
    return "\n".join(l.replace(os.getcwd() + "/", "") for l in lines[start:] if l.strip())


def sequential_seconds_per_edit(adapter: MLLMAdapter, requests: Sequence[EditRequest], image_root: Path, pool,
                                preserve, methods: Sequence[str], base: EditConfig | None = None,
                                key_cache: Path | None = None) -> dict[str, float]:
    """Wall seconds per edit of a sequential run (what a batch pays: environments, baselines,
    optimisation, scoring, and for lifelong methods the key bank and each edit's projector),
    the model restored after each method. A method named twice is timed twice (with
    `key_cache`, the second lifelong run reads the preserved keys the first one wrote: what
    every batch after the first pays); the second timing is keyed `<name> (warm)`."""
    from odedit.bench.grid import parse_method

    names = [n for n, _ in adapter.model.named_parameters()]
    out = {}
    for name in methods:
        cfg = parse_method(name).config(0, base)
        before = snapshot(adapter.model, names)
        t0 = time.perf_counter()
        run_edits(adapter, list(requests), image_root, cfg, pool, sequential=True,
                  preserve=preserve if cfg.base.null_space else (), key_cache=key_cache)
        out[f"{name} (warm)" if name in out else name] = (time.perf_counter() - t0) / len(requests)
        remove_delta(adapter.model, AppliedDelta(before))
    return out
