"""The positions a step's losses read, one row each ("compact").

With `EnvBatch.forward(positions=...)` the forward returns the last hidden states
and the logits only at the read positions, per group [N_g, d]; concatenated in the batch's group
order they are the rows of this module's `ReadOut`. It maps batch rows and environments onto
those rows, so that a per-row mean of per-position terms (a sample's NLL or KL) or a weighted sum
of them (an environment's risk) is one matrix product, and the losses never index a [B, T, V]
tensor (speed, and memory: no [B, T, vocabulary] tensor on a 7B model). Built in plain Python
over the read positions only: a step's layout costs a few tensor constructions, not dozens of
ops."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from odedit.models.adapter import IGNORE_INDEX


@dataclass
class ReadOut:
    read: dict[str, torch.Tensor]  # per group [B, T] bool: the positions read (`losses.read_positions`)
    offsets: dict[str, int]  # per group, the global index of its first row (groups in batch order)
    rows: int  # batch rows over all groups
    local: dict[str, tuple[list[int], list[int]]]  # per group (row, t) of each of its positions
    row: list[int]  # global row of each position
    answer: list[bool]  # the token the position's logits predict is a target token
    real: list[bool]  # the position is a real token (not padding)
    targets: torch.Tensor  # [N] that token (0 where it is none)

    @classmethod
    def of(cls, encoded: dict, read: dict[str, torch.Tensor]) -> "ReadOut":
        """`encoded`: {group: Encoded} (an `EnvBatch`'s); `read`: per group the positions read
        (never the last one: logits at t predict token t + 1)."""
        offsets, total, local = {}, 0, {}
        row, answer, real, targets = [], [], [], []
        device = None
        for g, enc in encoded.items():
            offsets[g], total = total, total + enc.size
            device = enc.labels.device
            r, t = read[g].nonzero(as_tuple=True)  # O(read positions) below, not O(B x T)
            rs, ts = r.tolist(), t.tolist()
            mask = enc.inputs["attention_mask"].to(device)
            for nxt, on in zip(enc.labels[r, t + 1].tolist(), mask[r, t].tolist()):
                answer.append(nxt != IGNORE_INDEX)
                targets.append(nxt if nxt != IGNORE_INDEX else 0)
                real.append(bool(on))
            local[g] = (rs, ts)
            row += [x + offsets[g] for x in rs]
        return cls(read, offsets, total, local, row, answer, real,
                   torch.tensor(targets, dtype=torch.long, device=device))

    @property
    def size(self) -> int:
        return len(self.row)

    def row_weights(self, which: list[bool], reduction: str = "mean") -> list[dict[int, float]]:
        """Per batch row, {position: weight}: the mean (or, `reduction` "sum", the sum) of a
        per-position term over that row's positions in `which`."""
        out: list[dict[int, float]] = [{} for _ in range(self.rows)]
        for n, (r, w) in enumerate(zip(self.row, which)):
            if w:
                out[r][n] = 1.0
        if reduction != "sum":
            for at in out:
                for n in at:
                    at[n] = 1.0 / len(at)
        return out

    def spread(self, parts: list[dict[int, float]], per_row: list[dict[int, float]], width: int = 1,
               offset: int = 0, into: list[list[float]] | None = None) -> list[list[float]]:
        """Each part ({batch row: weight}) as weights over positions, each row's weight spread by
        `per_row` (`row_weights`): a list per part of N * `width` floats, position n's at
        n * width + `offset` (several terms per position side by side), added to `into` if given."""
        m = into if into is not None else [[0.0] * (self.size * width) for _ in parts]
        for i, part in enumerate(parts):
            for r, w in part.items():
                for n, x in per_row[r].items():
                    m[i][n * width + offset] += w * x
        return m

    def global_rows(self, group: str, rows: list[int]) -> list[int]:
        """Rows of one group's batch as global rows."""
        return [r + self.offsets[group] for r in rows]

    @staticmethod
    def cat(out: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A compact forward's per-group (hidden, logits) as one (hidden [N, d], logits [N, V])."""
        if len(out) == 1:
            return next(iter(out.values()))
        parts = list(out.values())
        return torch.cat([h for h, _ in parts]), torch.cat([lg for _, lg in parts])
