"""Null-space constrained updates (after AlphaEdit, Fang et al., ICLR 2025), for lifelong editing.

An FT-L / LoRA edit changes one MLP projection W (out x in). Its effect on any input reaches the
model only through the projection's input vectors ("keys" k, the activations entering W). If the
update Delta satisfies Delta k = 0 for every key of the knowledge to preserve, those inputs map
exactly as before. AlphaEdit takes K0 = the preserved keys, the eigenvectors U of K0 K0^T with
near-zero eigenvalues, and projects Delta <- Delta U U^T. Here the projection is applied to the
accumulated change after every optimiser step (the editors' `after_step`), so gradient-based
base editors keep the guarantee. Keys are invariant under the edit itself (they are computed
below the edited projection), so one `KeyBank` serves a whole batch: each edit only takes an
eigendecomposition of the bank minus the fact it replaces.

PRODUCT choice, not part of ODEdit: the preserved set is `odedit.pools.preservation_for` (what
the model already knows) plus earlier edits (so later edits do not overwrite them).

Soft preservation (PRODUCT, this project's): a wider "soft" set (more phrasings / views of the
same knowledge) is not projected out - that would leave too few directions for an edit to fit -
but the update is shrunk along it after every step (`BaseEditorConfig.soft_decay`), so among the
updates that fit, one that moves those inputs less is preferred.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch

from odedit.models.adapter import MLLMAdapter, Sample


@torch.no_grad()
def batch_keys(adapter: MLLMAdapter, module: torch.nn.Module, samples: Sequence[Sample], batch_size: int = 32):
    """(indices, keys [positions, in], row of each position) per batch of samples: the inputs of
    `module` at the real token positions, in batches per modality (one forward per batch,
    stopped at `module`), in float64 on the CPU."""
    groups = ([i for i, s in enumerate(samples) if s.image is not None],
              [i for i, s in enumerate(samples) if s.image is None])
    for group in groups:
        for start in range(0, len(group), batch_size):
            idx = group[start:start + batch_size]
            enc = adapter.encode([samples[i] for i in idx])
            x = adapter.module_input(enc, module).to(torch.float64).cpu()
            mask = enc.inputs["attention_mask"].to(torch.bool).cpu()
            rows = torch.arange(len(idx))[:, None].expand_as(mask)
            yield idx, x[mask], rows[mask]


def key_covariance(adapter: MLLMAdapter, module: torch.nn.Module, samples: Sequence[Sample]) -> torch.Tensor:
    """sum_k k k^T over the inputs of `module` at every real token position of `samples`."""
    return key_covariances(adapter, module, samples, [0] * len(samples), 1)[0]


def key_covariances(adapter: MLLMAdapter, module: torch.nn.Module, samples: Sequence[Sample],
                    part: Sequence[int], parts: int) -> list[torch.Tensor]:
    """One key covariance per part (`part[i]` is sample i's), from one pass over all samples."""
    n = module.weight.shape[1]
    covs = [torch.zeros(n, n, dtype=torch.float64) for _ in range(parts)]
    for idx, keys, rows in batch_keys(adapter, module, samples):
        _add_by_part(covs, keys, torch.tensor([part[i] for i in idx])[rows])
    return covs


def _add_by_part(covs: Sequence[torch.Tensor], keys: torch.Tensor, which: torch.Tensor) -> None:
    """covs[j] += K_j^T K_j, K_j the keys whose position belongs to part j (`which`, one per
    position): one product per batch and part, not one per sample."""
    for j, acc in enumerate(covs):
        sel = keys if len(covs) == 1 else keys[which == j]
        if len(sel):
            acc.add_(sel.T @ sel)


def null_projector(cov: torch.Tensor, tol: float) -> torch.Tensor:
    """P = U U^T over the eigenvectors of `cov` whose eigenvalue is below tol * the largest."""
    vals, vecs = torch.linalg.eigh(cov)
    if vals.numel() == 0 or float(vals.max()) <= 0:
        return torch.eye(cov.shape[0])
    null = vecs[:, vals < tol * vals.max()]
    return (null @ null.T).float()


def _cache_key(samples: Sequence[Sample], subjects, soft, first_keys: torch.Tensor) -> str:
    """What the keys of `samples` depend on: their content (prompt, target, image pixels, subject,
    set) and the model below the edited projection, stood for by the first batch's keys."""
    h = hashlib.sha256(first_keys.numpy().tobytes())
    for s, subj, j in zip(samples, subjects, soft):
        h.update(f"{s.prompt}\x00{s.target}\x00{subj}\x00{j}\x00".encode())
        if s.image is not None:
            h.update(s.image.tobytes())
    return h.hexdigest()[:32]


def _read_cached(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two cached covariances at `path`, or None when there are none or they cannot be read
    as two (n x n) float64 tensors (then they are recomputed and the file rewritten)."""
    if not path.is_file():
        return None
    try:
        got = torch.load(path)
    except Exception:
        return None
    ok = (isinstance(got, (tuple, list)) and len(got) == 2
          and all(isinstance(t, torch.Tensor) and t.shape == (n, n) and t.dtype == torch.float64 for t in got))
    return tuple(got) if ok else None


def fact_key(subject: str | None, answer: str | None) -> tuple[str, str]:
    """What identifies "the same fact" generically: the subject and the answer the model gives.
    An edit of X replaces the answer it currently gives; every other answer about X stays."""
    return (subject or "").strip().lower(), (answer or "").strip().lower()


class KeyBank:
    """The key covariance of the knowledge to preserve, with its samples bucketed by fact
    (subject, current answer), so that each edit's projector can leave out the keys of the very
    fact it replaces (the answer it changes, about its subject); other facts of the same subject
    stay protected. Keys do not depend on the edited projection, so one bank serves a whole batch
    of sequential edits; earlier edits are added as they land.

    Memory: one (in x in) covariance per set (hard, soft), whatever the number of facts; a
    fact's own covariance is recomputed from its few samples when an edit needs it left out
    (a forward up to the edited projection), not stored (a 7B `down_proj` has in = 11008: one
    float64 covariance is ~1 GB, one per fact would not fit); only the fact of the edit at hand
    keeps its covariances, from its projector to its landing."""

    def __init__(self, adapter: MLLMAdapter, module: torch.nn.Module, tol: float):
        self.adapter, self.module, self.tol = adapter, module, tol
        n = module.weight.shape[1]
        # index 0: the hard bank (projected out), 1: the soft set (shrunk along)
        self.facts: tuple[dict[tuple[str, str], list[Sample]], ...] = ({}, {})
        self.totals = (torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64))
        # the covariances of the fact an edit is about, kept from its projector to its landing
        # (projector, soft metric, forget each need them): at most one fact's, two matrices
        self._recent: dict[tuple[int, tuple[str, str]], torch.Tensor | None] = {}

    def add(self, samples: Sequence[Sample], subjects: Sequence[str | None],
            soft: Sequence[bool] | None = None, cache: str | Path | None = None,
            keys: Sequence[torch.Tensor] | None = None) -> None:
        """Preserve `samples` (each sample's target is the answer that must stay); those marked
        `soft` join the soft set instead of the hard bank. With `cache` (a folder), the two
        covariances these samples add are kept there, keyed by the samples' content and by the
        keys of their first batch (so another model, or other weights below the edited
        projection, never hits), and read back instead of recomputed. `keys` (one [positions, in]
        float64 tensor per sample, as `batch_keys` gives them, e.g. from the edit's own batch,
        `EnvBatch.keys_of`): used as they are, no forward pass."""
        subjects, soft = list(subjects), [int(bool(x)) for x in (soft or [False] * len(samples))]
        self._recent.clear()  # a fact's samples may change
        for i, s in enumerate(samples):
            self.facts[soft[i]].setdefault(fact_key(subjects[i], s.target), []).append(s)
        if not samples:
            return
        n = self.module.weight.shape[1]
        added = (torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64))
        # (sample indices, keys, sample of each key) per batch: the given keys are one batch
        if keys is None:
            batches = batch_keys(self.adapter, self.module, samples)
        else:
            which = torch.cat([torch.full((len(k),), i) for i, k in enumerate(keys)])
            batches = [(range(len(samples)), torch.cat(list(keys)), which)]
        path = None
        for b, (idx, keys, rows) in enumerate(batches):
            if b == 0 and cache is not None:
                path = Path(cache) / f"{_cache_key(samples, subjects, soft, keys)}.pt"
                got = _read_cached(path, n)
                if got is not None:
                    for total, g in zip(self.totals, got):
                        total.add_(g)
                    try:  # in use: the clean-up (`lifecycle.reap`) removes entries long unused
                        os.utime(path)
                    except OSError:  # a read-only cache is still a cache
                        pass
                    return
            _add_by_part(added, keys, torch.tensor([soft[i] for i in idx])[rows])  # each position's set
        for total, acc in zip(self.totals, added):
            total.add_(acc)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per writer: concurrent batches never share it
            torch.save(added, tmp)
            tmp.replace(path)  # atomic: a reader never sees half a file

    def _fact_cov(self, j: int, subject: str | None, answer: str | None) -> torch.Tensor | None:
        key = fact_key(subject, answer)
        if (j, key) not in self._recent:  # both sets' covariances of the fact, from one pass
            self._recent.clear()
            mine = [self.facts[i].get(key) or [] for i in range(len(self.facts))]
            samples = [s for ss in mine for s in ss]
            covs = key_covariances(self.adapter, self.module, samples,
                                   [i for i, ss in enumerate(mine) for _ in ss], len(mine)) if samples else []
            for i, ss in enumerate(mine):
                self._recent[(i, key)] = covs[i] if ss else None
        return self._recent[(j, key)]

    def forget(self, subject: str | None, answer: str | None) -> None:
        """Stop preserving a fact that was replaced on purpose (an edit changed that answer)."""
        for j, total in enumerate(self.totals):
            cov = self._fact_cov(j, subject, answer)
            if cov is not None:
                total.sub_(cov)
                del self.facts[j][fact_key(subject, answer)]
        self._recent.clear()

    def _without(self, j: int, subject: str | None, answer: str | None) -> torch.Tensor:
        cov = self._fact_cov(j, subject, answer)
        return self.totals[j] if cov is None else self.totals[j] - cov

    def projector(self, subject: str | None = None, answer: str | None = None) -> torch.Tensor:
        """The null-space projector of everything preserved but the fact (subject, answer)."""
        return null_projector(self._without(0, subject, answer), self.tol)

    def soft_metric(self, subject: str | None = None, answer: str | None = None,
                    within: torch.Tensor | None = None) -> torch.Tensor | None:
        """The soft set's key covariance but the fact (subject, answer), restricted to the
        subspace `within` projects onto (the null space the update lives in: P C P) and scaled to
        spectral norm 1 there, so `soft_decay` is the shrink along the strongest direction an
        update can take; None when empty."""
        cov = self._without(1, subject, answer)
        if within is not None:
            p = within.to(cov.dtype)
            cov = p @ cov @ p
        top = float(torch.linalg.eigvalsh(cov).max()) if cov.numel() else 0.0
        return (cov / top).float() if top > 0 else None
