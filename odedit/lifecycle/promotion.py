"""Re-checking a candidate against the CURRENT champion before promotion (pure: the registry
I/O happens in tasks/). The champion may have moved since the candidate was gated (another
promotion, a rollback), so the regression probes are answered again by both models."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from odedit.lifecycle import gate
from odedit.lifecycle.batch import probe_answers


def recheck(base_ref: str, champion_delta: str | Path, candidate_delta: str | Path, probes: Sequence[gate.Probe],
            probe_dir: str | Path | None, intended: Mapping[str, Iterable[str]], records: list[dict],
            cfg: gate.GateConfig, final_metrics: Mapping | None = None,
            edited: Mapping[str, Iterable[str]] | None = None) -> gate.GateVerdict:
    """`intended`: subject -> targets of the candidate ledger's live edits (a probe whose new
    answer is one of them changed on purpose); `edited`: subject -> old and new values of those
    edits' facts (`ledger.edited_facts`); `records` / `final_metrics`: the final-model
    scores measured when the candidate's batches were gated."""
    from odedit.lifecycle.models import load_edited

    champ = probe_answers(load_edited(base_ref, champion_delta), probes, probe_dir)
    cand = probe_answers(load_edited(base_ref, candidate_delta), probes, probe_dir)
    return gate.evaluate_gate(records, cfg, gate.regression_check(list(probes), champ, cand, intended, edited),
                              final_metrics)
