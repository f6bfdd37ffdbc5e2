"""The edit request: an image, a prompt and the new target, with optional generality and
locality probes. Field names follow MMEdit as read by EasyEdit (`src`, `alt`, `image`,
`rephrase`, `image_rephrase`, `loc`, `loc_ans`, `m_loc`, `m_loc_q`, `m_loc_a`); MMEdit
stores one string per probe field, odedit also accepts lists.

Which fields optimisation may see (see `odedit.environments`):
  - `rephrase`, `image_rephrase`, `loc*`, `m_loc*`: HELD OUT. They measure T-Gen, M-Gen,
    T-Loc, M-Loc and gate the edit; optimisation never sees them.
  - `train_rephrase`, `train_image_rephrase`: semantic-equivalent (SE) material that
    optimisation may use.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from schemas.ids import ID_MAX_LENGTH, ID_PATTERN


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return value


StrList = Annotated[list[str], BeforeValidator(_as_list)]


class AuditInfo(BaseModel):
    """Who asked for an edit, why, and under which ticket."""

    requester: str | None = None
    reason: str | None = None
    ticket: str | None = None
    submitted_at: datetime | None = None


class EditRequest(AuditInfo):
    """One knowledge edit. Image paths are relative to an image root (or absolute inside it)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    id: str = Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN,
                    description="unique id of the request within its batch: 1-128 of A-Z a-z 0-9 . _ -, "
                                "not starting with '.' or '-' (schemas/ids.py)")
    image: str = Field(min_length=1, description="path of the edit image")
    src: str = Field(min_length=1, description="the edit prompt (question about the image)")
    alt: str = Field(min_length=1, description="the new target answer")
    pred: str | None = Field(None, description="the current (pre-edit) answer, if known")
    subject: str | None = Field(None, description="the edited subject, for overlap checks")
    rephrase: StrList = Field(default_factory=list, description="held-out text rephrasings (T-Gen)")
    image_rephrase: StrList = Field(default_factory=list, description="held-out other images (M-Gen)")
    loc: StrList = Field(default_factory=list, description="held-out unrelated text prompts (T-Loc)")
    loc_ans: StrList = Field(default_factory=list, description="answers of `loc`, same order")
    m_loc: StrList = Field(default_factory=list, description="held-out unrelated images (M-Loc)")
    m_loc_q: StrList = Field(default_factory=list, description="questions of `m_loc`, same order")
    m_loc_a: StrList = Field(default_factory=list, description="answers of `m_loc`, same order")
    train_rephrase: StrList = Field(default_factory=list, description="rephrasings optimisation may use (SE)")
    train_image_rephrase: StrList = Field(default_factory=list, description="other images optimisation may use (SE)")

    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("image", "image_rephrase", "m_loc", "train_image_rephrase")

    def with_image_prefix(self, prefix: str) -> "EditRequest":
        """The same request with every image path (relative) put under folder `prefix`."""
        def under(p: str) -> str:
            return p if Path(p).is_absolute() else str(PurePosixPath(prefix) / p)
        update = {f: (under(v) if isinstance(v, str) else [under(x) for x in v])
                  for f in self.IMAGE_FIELDS for v in [getattr(self, f)]}
        return self.model_copy(update=update)
