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
"""

from __future__ import annotations

from typing import Sequence

import torch

from odedit.models.adapter import MLLMAdapter, Sample


@torch.no_grad()
def sample_keys(adapter: MLLMAdapter, module: torch.nn.Module, samples: Sequence[Sample], batch_size: int = 32):
    """(index, keys [positions, in]) for every sample: the inputs of `module` at its real token
    positions, computed in batches per modality (one forward per batch, stopped at `module`)."""
    groups = ([i for i, s in enumerate(samples) if s.image is not None],
              [i for i, s in enumerate(samples) if s.image is None])
    for group in groups:
        for start in range(0, len(group), batch_size):
            idx = group[start:start + batch_size]
            enc = adapter.encode([samples[i] for i in idx])
            x = adapter.module_input(enc, module).to(torch.float64).cpu()
            mask = enc.inputs["attention_mask"].to(torch.bool).cpu()
            for row, i in enumerate(idx):
                yield i, x[row][mask[row]]


def key_covariance(adapter: MLLMAdapter, module: torch.nn.Module, samples: Sequence[Sample]) -> torch.Tensor:
    """sum_k k k^T over the inputs of `module` at every real token position of `samples`."""
    cov = torch.zeros(module.weight.shape[1], module.weight.shape[1], dtype=torch.float64)
    for _, keys in sample_keys(adapter, module, samples):
        cov.add_(keys.T @ keys)
    return cov


def null_projector(cov: torch.Tensor, tol: float) -> torch.Tensor:
    """P = U U^T over the eigenvectors of `cov` whose eigenvalue is below tol * the largest."""
    vals, vecs = torch.linalg.eigh(cov)
    if vals.numel() == 0 or float(vals.max()) <= 0:
        return torch.eye(cov.shape[0])
    null = vecs[:, vals < tol * vals.max()]
    return (null @ null.T).float()


def fact_key(subject: str | None, answer: str | None) -> tuple[str, str]:
    """What identifies "the same fact" generically: the subject and the answer the model gives.
    An edit of X replaces the answer it currently gives; every other answer about X stays."""
    return (subject or "").strip().lower(), (answer or "").strip().lower()


class KeyBank:
    """Key covariances of the knowledge to preserve, bucketed by fact (subject, current answer),
    so that each edit's projector can leave out the keys of the very fact it replaces (the answer
    it changes, about its subject) without recomputing the rest; other facts of the same subject
    stay protected. Keys do not depend on the edited projection, so one bank serves a whole batch
    of sequential edits; earlier edits are added as they land."""

    def __init__(self, adapter: MLLMAdapter, module: torch.nn.Module, tol: float):
        self.adapter, self.module, self.tol = adapter, module, tol
        self.by_fact: dict[tuple[str, str], torch.Tensor] = {}
        self.total = torch.zeros(module.weight.shape[1], module.weight.shape[1], dtype=torch.float64)

    def add(self, samples: Sequence[Sample], subjects: Sequence[str | None]) -> None:
        """Preserve `samples` (each sample's target is the answer that must stay)."""
        subjects = list(subjects)
        for i, keys in sample_keys(self.adapter, self.module, samples):
            cov = keys.T @ keys
            key = fact_key(subjects[i], samples[i].target)
            self.by_fact[key] = self.by_fact.get(key, 0) + cov
            self.total += cov

    def forget(self, subject: str | None, answer: str | None) -> None:
        """Stop preserving a fact that was replaced on purpose (an edit changed that answer)."""
        cov = self.by_fact.pop(fact_key(subject, answer), None)
        if cov is not None:
            self.total -= cov

    def projector(self, subject: str | None = None, answer: str | None = None) -> torch.Tensor:
        """The null-space projector of everything preserved but the fact (subject, answer)."""
        key = fact_key(subject, answer)
        cov = self.total - self.by_fact[key] if key in self.by_fact else self.total
        return null_projector(cov, self.tol)
