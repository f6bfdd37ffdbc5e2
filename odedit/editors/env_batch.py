"""All samples of an edit's environments packed for one forward pass per step.

Samples are encoded per modality (image / text-only). When the model supports it, the frozen
prefix (vision tower, projector, embeddings, decoder layers below the edited one) is run ONCE
and cached, so each optimisation step runs only the decoder layers from the edited one up; the
two modalities' cached states are merged into a single batch when padding the short (text)
rows to the long (image) ones costs little (`merge_pays`), else kept as two."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from odedit.environments import Environment
from odedit.models.adapter import IGNORE_INDEX, Encoded, MLLMAdapter, Sample


@dataclass
class EnvRows:
    env: Environment
    group: str  # "image" | "text" | "all" (merged)
    rows: torch.Tensor  # row indices in that group's batch


def _pad_right(t: torch.Tensor, length: int, value) -> torch.Tensor:
    pad = length - t.shape[1]
    if pad == 0:
        return t
    spec = (0, 0, 0, pad) if t.dim() == 3 else (0, pad)
    return F.pad(t, spec, value=value)


def merge_prefixed(parts: list[Encoded]) -> Encoded:
    """Concatenate prefix-cached batches along the batch axis (right-padding the time axis)."""
    length = max(p.labels.shape[1] for p in parts)
    mask = torch.cat([_pad_right(p.inputs["attention_mask"], length, 0) for p in parts])
    labels = torch.cat([_pad_right(p.labels, length, IGNORE_INDEX) for p in parts])
    prefix, attn, key = (torch.cat([_pad_right(getattr(p, f), length, 0.0) for p in parts])
                         if getattr(parts[0], f) is not None else None for f in ("prefix", "attn", "key"))
    return Encoded({"attention_mask": mask}, labels, prefix, parts[0].prefix_layer, attn, key)


def _rows_of(enc: Encoded, rows: torch.Tensor) -> Encoded:
    """Some rows of a prefix-cached batch, right padding beyond the longest of them dropped."""
    mask = enc.inputs["attention_mask"][rows]
    length = int(mask.any(dim=0).nonzero().max()) + 1  # past the last real position of any row
    attn, key = (None if t is None else t[rows][:, :length] for t in (enc.attn, enc.key))
    return Encoded({"attention_mask": mask[:, :length]}, enc.labels[rows][:, :length],
                   enc.prefix[rows][:, :length], enc.prefix_layer, attn, key)


def merge_pays(encoded: dict[str, Encoded], slack: float = 1.25) -> bool:
    """One merged batch (one forward per step) unless right-padding every row to the longest
    costs more than `slack` x the positions of the separate batches: image rows are hundreds of
    tokens, text rows tens, and padded positions cost compute and activation memory all the way
    up (PRODUCT, speed and memory only: the rows' values are the same either way)."""
    merged = sum(e.size for e in encoded.values()) * max(e.labels.shape[1] for e in encoded.values())
    separate = sum(e.size * e.labels.shape[1] for e in encoded.values())
    return merged <= slack * separate


class EnvBatch:
    def __init__(self, adapter: MLLMAdapter, envs: list[Environment], with_eos: bool = False,
                 prefix_layer: int | None = None, inside: bool = False):
        """`prefix_layer`: cache everything below that decoder layer; `inside`: the edit changes
        only that layer's MLP output projection, so cache the rest of the layer too
        (`MLLMAdapter.cache_prefix`)."""
        samples = {"image": [], "text": []}
        placed: list[tuple[Environment, str, list[int]]] = []
        for env in envs:
            by_group = {"image": [], "text": []}
            for s in env.samples:
                group = "image" if s.image is not None else "text"
                by_group[group].append(len(samples[group]))
                samples[group].append(s)
            placed += [(env, g, idx) for g, idx in by_group.items() if idx]
        encoded = {g: adapter.encode(s, with_eos=with_eos) for g, s in samples.items() if s}
        self.with_eos = with_eos
        # each batch row's sample, per group (a merged group: image rows, then text rows)
        self._sample_at = {g: samples[g] for g in encoded}
        if prefix_layer is not None and adapter.supports_prefix_cache and prefix_layer > 0:
            encoded = {g: adapter.cache_prefix(e, prefix_layer, inside) for g, e in encoded.items()}
        if len(encoded) > 1 and all(e.prefix is not None for e in encoded.values()) and merge_pays(encoded):
            offsets, total = {}, 0
            for g, e in encoded.items():
                offsets[g], total = total, total + e.size
            placed = [(env, "all", [i + offsets[g] for i in idx]) for env, g, idx in placed]
            encoded = {"all": merge_prefixed(list(encoded.values()))}
            self._sample_at = {"all": [x for g in offsets for x in self._sample_at[g]]}
        self.encoded: dict[str, Encoded] = encoded
        self.rows = [EnvRows(env, g, torch.tensor(idx)) for env, g, idx in placed]

    def keys_of(self, kinds: tuple[str, ...]) -> list[tuple[Sample, torch.Tensor]] | None:
        """(sample, its keys [real positions, in] in float64 on the CPU) for every row of the
        environments of `kinds`: the edited projection's inputs, as `nullspace.batch_keys` takes
        them, read from the cache inside the edited layer (`inside`); None without that cache or
        with an EOS appended (the keys then cover a position the bank's encoding has not)."""
        if self.with_eos or not all(e.key is not None for e in self.encoded.values()):
            return None
        out = []
        for er in self.rows:
            if er.env.kind in kinds:
                enc = self.encoded[er.group]
                mask = enc.inputs["attention_mask"].bool()
                out += [(self._sample_at[er.group][r], enc.key[r][mask[r]].to(torch.float64).cpu())
                        for r in er.rows.tolist()]
        return out

    @property
    def can_sample(self) -> bool:
        """Rows can be drawn per step where every group is prefix-cached (plain tensors to
        index); a model without the cache keeps its family's own inputs, so every row runs."""
        return all(e.prefix is not None for e in self.encoded.values())

    def sample(self, per_env: int, rng, whole: tuple[str, ...] = ()) -> tuple["EnvBatch", dict[str, torch.Tensor]]:
        """A view with at most `per_env` rows of each environment part (those of kinds in `whole`
        entirely), drawn with `rng`, trimmed to the longest row drawn; and, per group, the rows
        of this batch it holds (to index anything computed per row, e.g. pre-edit logits)."""
        picks, chosen = [], {g: set() for g in self.encoded}
        for er in self.rows:
            idx = er.rows.tolist()
            if er.env.kind not in whole and len(idx) > per_env:
                idx = sorted(rng.sample(idx, per_env))
            picks.append((er, idx))
            chosen[er.group].update(idx)
        keep = {g: torch.tensor(sorted(v)) for g, v in chosen.items() if v}
        at = {g: {r: i for i, r in enumerate(k.tolist())} for g, k in keep.items()}
        view = object.__new__(EnvBatch)
        view.encoded = {g: _rows_of(self.encoded[g], k) for g, k in keep.items()}
        view.rows = [EnvRows(er.env, er.group, torch.tensor([at[er.group][r] for r in idx])) for er, idx in picks]
        return view, keep

    def forward(self, adapter: MLLMAdapter, scale: torch.Tensor | dict[str, torch.Tensor] | None = None,
                raw: bool = False, positions: dict[str, torch.Tensor] | None = None):
        """{group: (hidden, logits)} for every group; `scale` one tensor for all groups or one per
        group (e.g. a [rows, 1, 1] scale per row); `raw` and `positions` (per group, the positions
        the caller reads: then both only there, one row each) as in `MLLMAdapter.hidden_and_logits`."""
        def of(g):
            return scale.get(g) if isinstance(scale, dict) else scale
        return {g: adapter.hidden_and_logits(enc, of(g), raw, None if positions is None else positions.get(g))
                for g, enc in self.encoded.items()}
