"""What a benchmark grid is: methods (base editors, ODEdit, ablations of ODEdit's INFERRED
terms, an in-context baseline), seeds, edits per seed and the sequential lengths T.

Method names:
  ft-l, lora, odedit-ft-l, odedit-lora   the editors of `odedit.config.METHODS`
  odedit-ft-l[-tv]                        ODEdit without the TV-IRM penalty (tv=False)
  odedit-ft-l[-gen]                       without the MMD generality risk (w_gen=0)
  odedit-ft-l[-se_nll]                    without the target NLL on SE samples (w_se_nll=0)
  odedit-ft-l[-loc]                       without OUT: w_loc=0 and no OUT probes at all
  odedit-ft-l[+dual]                      lambda learned by dual ascent (Eq. 13; off by default)
  odedit-ft-l[-dual]                      lambda fixed at lambda_init (the default)
  icl                                     in-context editing: the new fact is prepended to every
                                          prompt at inference, no weight change (IKE-style, zero-shot)
Any `odedit-*[...]` name may combine ablations: `odedit-lora[-tv,-gen]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from odedit.config import METHODS, EditConfig

ABLATIONS: dict[str, dict] = {
    "-tv": {"tv": False},
    "-gen": {"w_gen": 0.0},
    "-se_nll": {"w_se_nll": 0.0},
    "-loc": {"w_loc": 0.0, "n_out_text": 0, "n_out_image": 0},
    "-dual": {"dual": False},
    "+dual": {"dual": True},
    # cost variants (not ablations of a term): stochastic environments, k rows per SE / OUT env a
    # step (1 is the default since session 5; "+all" = every row every step, the paper's objective)
    "+all": {"env_samples": 0},
    "+sample1": {"env_samples": 1},
    "+sample2": {"env_samples": 2},
}
ICL = "icl"
_NAME = re.compile(r"^(?P<base>[a-z\-]+?)(?:\[(?P<abl>[^\]]*)\])?$")


@dataclass(frozen=True)
class MethodSpec:
    name: str  # as shown in tables
    method: str  # an odedit.config.METHODS entry, or "icl"
    odedit_overrides: dict = field(default_factory=dict)

    @property
    def is_icl(self) -> bool:
        return self.method == ICL

    def config(self, seed: int, base: EditConfig | None = None) -> EditConfig:
        """The EditConfig of this method at `seed` (starting from `base`'s hyperparameters)."""
        src = base or EditConfig()
        data = src.given()  # what the caller chose; this method's preset (if any) fills the rest
        data.update(method=self.method if not self.is_icl else "ft-l", seed=seed)
        data["odedit"] = {**data["odedit"], **self.odedit_overrides}
        return EditConfig.from_dict(data)


def parse_method(name: str) -> MethodSpec:
    """`odedit-ft-l[-tv]` -> MethodSpec(method='odedit-ft-l', overrides={'tv': False})."""
    name = name.strip()
    if name == ICL:
        return MethodSpec(ICL, ICL)
    m = _NAME.match(name)
    if not m or m["base"] not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}, {ICL}, "
                         f"or odedit-*[{'|'.join(ABLATIONS)}]")
    overrides: dict = {}
    if m["abl"] is not None:
        if not m["base"].startswith("odedit-"):
            raise ValueError(f"{name!r}: ablations apply to odedit-* methods only")
        for part in filter(None, (p.strip() for p in m["abl"].split(","))):
            if part not in ABLATIONS:
                raise ValueError(f"{name!r}: unknown ablation {part!r}; choose from {', '.join(ABLATIONS)}")
            overrides.update(ABLATIONS[part])
    return MethodSpec(name, m["base"], overrides)


@dataclass(frozen=True)
class Grid:
    """methods x seeds; per (method, seed): `n_single` single edits (each on the unedited
    model) and one sequential run of max(ts) edits evaluated after T = each of `ts` edits."""

    name: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    n_single: int
    ts: tuple[int, ...]

    @property
    def specs(self) -> list[MethodSpec]:
        return [parse_method(m) for m in self.methods]

    @property
    def n_requests(self) -> int:
        return max([self.n_single, *self.ts]) if self.ts else self.n_single

    def edits_per_cell(self) -> int:
        return self.n_single + (max(self.ts) if self.ts else 0)

    def total_edits(self) -> int:
        """Weight edits the grid runs (icl edits cost no optimisation and are not counted)."""
        return sum(self.edits_per_cell() for s in self.specs if not s.is_icl) * len(self.seeds)

    def with_(self, **kw) -> "Grid":
        return replace(self, **kw)


BASE_METHODS = ("ft-l", "lora", "odedit-ft-l", "odedit-lora")
ABLATION_METHODS = ("odedit-ft-l[-tv]", "odedit-ft-l[-gen]", "odedit-ft-l[-se_nll]", "odedit-ft-l[-loc]",
                    "odedit-ft-l[+dual]")

# < 5 min on 2 CPU cores with the embedded model (see bench/README.md for measured times).
# T=1 is the single-edit row (a sequential run's first edit is exactly a single edit).
QUICK = Grid("quick", BASE_METHODS, seeds=(0, 1, 2), n_single=2, ts=(5,))
# The control: ODEdit's data (IN + SE environments, target NLL on SE) without its terms (no MMD,
# no OUT/KL, no TV): what the environments alone buy.
CONTROL_METHODS = ("odedit-ft-l[-gen,-loc,-tv]",)
# The full grid of issue 5: all methods, ablations, the control and the in-context baseline.
FULL = Grid("full", BASE_METHODS + ABLATION_METHODS + CONTROL_METHODS + (ICL,), seeds=(0, 1, 2), n_single=10,
            ts=(1, 5, 10, 20))
# The test grid: 1 edit x 2 methods x 1 seed.
TINY = Grid("tiny", ("ft-l", "odedit-ft-l"), seeds=(0,), n_single=1, ts=())

GRIDS = {g.name: g for g in (QUICK, FULL, TINY)}
