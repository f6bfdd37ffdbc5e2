"""Benchmark of request validation: a generated N-row batch (default 10,000; ~2% bad rows of
several kinds) validated WITHOUT image decoding (`check_images=False`), from memory and from
a JSONL file, plus the quarantine/report writing. Prints a table of phases.

    python bench/bench_validation.py [--rows 10000] [--repeat 3] [--json]

Target: the 10,000-row validation (JSONL file -> result) under 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(_k, _v)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ["cube", "sphere", "cone", "torus", "pyramid", "cylinder"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def make_rows(n: int, seed: int = 0, bad_fraction: float = 0.02) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape = rng.choice(SHAPES)
        row = {
            "id": f"req-{i:06d}", "image": f"world/{i % 500:04d}.png",
            "src": f"What colour is the {shape} number {i} in this picture?", "alt": rng.choice(COLOURS),
            "pred": "unknown", "subject": f"{shape} number {i}",
            "rephrase": [f"Which colour does the {shape} number {i} have?"],
            "image_rephrase": [f"world/{(i + 1) % 500:04d}.png"],
            "loc": ["Who wrote the play Hamlet?"], "loc_ans": ["shakespeare"],
            "m_loc": [f"other/{i % 97:03d}.png"], "m_loc_q": ["How many animals are in the picture?"],
            "m_loc_a": ["two"], "requester": "bench", "ticket": f"T-{i}",
            "submitted_at": "2026-11-24T10:00:00Z",
        }
        if rng.random() < bad_fraction:
            kind = rng.randrange(6)
            if kind == 0:
                row["alt"] = "   "
            elif kind == 1:
                row["src"] = 12345
            elif kind == 2:
                row["id"] = "req-000000"
            elif kind == 3:
                row["image"] = "../../etc/passwd.png"
            elif kind == 4:
                row["loc"] = [f"What is the {shape} number {i} made of?"]
            else:
                del row["alt"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="time odedit request validation")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    from odedit.requests import ValidationLimits, validate_batch
    import great_expectations  # noqa: F401  (timed: the first validation would pay it otherwise)
    import_s = time.perf_counter() - t

    rows = make_rows(args.rows)
    limits = ValidationLimits()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp) / "bench.jsonl"
        batch.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for rep in range(args.repeat):
            t = time.perf_counter()
            res = validate_batch(batch, [tmp], limits, out_dir=Path(tmp) / f"out{rep}", check_images=False)
            total = time.perf_counter() - t
            runs.append((total, res.report))
        t = time.perf_counter()
        mem = validate_batch(rows, [tmp], limits, check_images=False)
        mem_s = time.perf_counter() - t

    best_total, best = min(runs, key=lambda x: x[0])
    figures = {
        "rows": args.rows, "cpu_count": os.cpu_count(), "import_s": round(import_s, 3),
        "file_total_s_median": round(statistics.median(r[0] for r in runs), 3),
        "file_total_s_best": round(best_total, 3), "in_memory_s": round(mem_s, 3),
        "phases_s_best": best.phases_s, "accepted": best.accepted, "rejected": best.rejected,
        "rejected_by_reason": best.rejected_by_reason, "rows_per_s": round(args.rows / best_total),
    }
    assert mem.report.accepted == best.accepted and best.rows_in == best.accepted + best.rejected
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"validate_batch, {args.rows:,} rows, check_images=False, {os.cpu_count()} CPU(s)")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_row("import (odedit.requests + great_expectations, once)", f"{import_s:.2f}")
    for phase, s in best.phases_s.items():
        table.add_row(f"  {phase}", f"{s:.2f}")
    table.add_row("  writing quarantine / accepted / GX result / report",
                  f"{best_total - sum(best.phases_s.values()):.2f}")
    table.add_section()
    table.add_row(f"JSONL file -> result + artifacts (best of {args.repeat})", f"{best_total:.2f}")
    table.add_row(f"JSONL file -> result + artifacts (median of {args.repeat})", f"{figures['file_total_s_median']:.2f}")
    table.add_row("in-memory rows -> result (no artifacts)", f"{mem_s:.2f}")
    table.add_row("rows / second", f"{figures['rows_per_s']:,}")
    table.add_row("accepted / rejected", f"{best.accepted:,} / {best.rejected:,}")
    Console().print(table)
    Console().print("rejected by reason: " + ", ".join(f"{k}={v}" for k, v in best.rejected_by_reason.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
