"""What a batch of edit requests IS, what a rejected (quarantined) row IS, and what a
validation report IS. Pydantic models only; the behaviour lives in `odedit.requests`.

Reason codes are plain strings here (the vocabulary is `odedit.requests.reasons.Reason`),
so these schemas stay free of library imports.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.request import EditRequest


class EditBatch(BaseModel):
    """A set of edit requests submitted together (ids unique within the batch)."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(min_length=1, description="id of the batch (e.g. the input file stem)")
    source: str | None = Field(None, description="where the batch was read from")
    requests: list[EditRequest] = Field(min_length=1, description="the accepted requests")


class RowIssue(BaseModel):
    """One problem found on one row."""

    field: str | None = Field(None, description="the offending field (None: the whole row)")
    reason: str = Field(description="reason code (odedit.requests.reasons.Reason)")
    message: str = Field(description="human-readable explanation naming the row and field")


class RejectedRow(BaseModel):
    """One quarantined input row: why it was refused, and its original payload so it can be
    fixed and resubmitted. One record per rejected input row (never more)."""

    row_id: str = Field(description="the row's id, or `<file>:<line>` / `<stem>-<index>` when it has none")
    row_index: int = Field(ge=0, description="0-based position of the row in the input")
    source: str = Field(description="where the row came from, e.g. `batch.jsonl:12`")
    field: str | None = Field(None, description="field of the primary issue (None: the whole row)")
    reason: str = Field(description="primary reason code")
    message: str = Field(description="primary human-readable message")
    issues: list[RowIssue] = Field(default_factory=list, description="every issue found on the row")
    payload: str = Field(description="the original row as a JSON string (or the raw line if unparseable)")


class ValidationReport(BaseModel):
    """Summary of one validation run. Invariant: rows_in == accepted + rejected."""

    batch_id: str
    source: str | None = None
    rows_in: int = Field(ge=0)
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    rejected_by_reason: dict[str, int] = Field(default_factory=dict, description="primary reason -> rows")
    issues_by_reason: dict[str, int] = Field(default_factory=dict, description="reason -> issues (all, not only primary)")
    gx_success: bool | None = Field(None, description="did every Great Expectations expectation pass")
    limits: dict = Field(default_factory=dict, description="the limits the batch was checked against")
    images_checked: bool = True
    started_at: datetime
    duration_s: float = Field(ge=0)
    phases_s: dict[str, float] = Field(default_factory=dict, description="seconds per phase (read, row_checks, table, gx_suite, images, model)")
    artifacts: dict[str, str] = Field(default_factory=dict, description="name -> path of written files")
