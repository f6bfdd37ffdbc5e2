"""The reason codes a request can be rejected with, and their one-line descriptions.

This module owns the vocabulary of rejection: every quarantined row carries exactly one
primary `Reason` (plus any further issues found on the same row). Codes are stable strings;
add new ones at the end, never rename one that has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    MALFORMED_ROW = "malformed_row"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    INVALID_UTF8 = "invalid_utf8"
    CONTROL_CHARACTERS = "control_characters"
    TEXT_TOO_LONG = "text_too_long"
    PROMPT_TOO_LONG = "prompt_too_long"
    TARGET_TOO_LONG = "target_too_long"
    PROBE_TOO_LONG = "probe_too_long"
    PROBE_MISMATCH = "probe_mismatch"
    INVALID_VALUE = "invalid_value"
    DUPLICATE_ID = "duplicate_id"
    DUPLICATE_REQUEST = "duplicate_request"
    TARGET_EQUALS_PROMPT = "target_equals_prompt"
    TARGET_EQUALS_CURRENT = "target_equals_current"
    CONTRADICTORY_EDIT = "contradictory_edit"
    LOCALITY_OVERLAPS_SUBJECT = "locality_overlaps_subject"
    IMAGE_PATH_ESCAPES_ROOT = "image_path_escapes_root"
    UNSUPPORTED_IMAGE_TYPE = "unsupported_image_type"
    IMAGE_MISSING = "image_missing"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_UNDECODABLE = "image_undecodable"
    IMAGE_TRUNCATED = "image_truncated"
    INVALID_ID_CHARS = "invalid_id_chars"
    ID_TOO_LONG = "id_too_long"
    LINE_TOO_LONG = "line_too_long"

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self]


DESCRIPTIONS: dict[Reason, str] = {
    Reason.MALFORMED_ROW: "the line / record is not valid JSON or not a JSON object",
    Reason.WRONG_TYPE: "a field has the wrong type (e.g. a number where text is expected)",
    Reason.MISSING_FIELD: "a required field (id, image, src, alt) is absent or null",
    Reason.EMPTY_FIELD: "a text field is empty or whitespace-only",
    Reason.INVALID_UTF8: "a text field holds bytes that are not valid UTF-8",
    Reason.CONTROL_CHARACTERS: "a text field holds control characters (other than tab / newline)",
    Reason.TEXT_TOO_LONG: "a text field exceeds the hard character limit",
    Reason.PROMPT_TOO_LONG: "the prompt needs more tokens than the model's context allows",
    Reason.TARGET_TOO_LONG: "the target needs more tokens than the model may generate",
    Reason.PROBE_TOO_LONG: "a rephrasing / locality probe is longer than the model's context allows",
    Reason.PROBE_MISMATCH: "locality questions and answers (loc/loc_ans, m_loc/m_loc_q/m_loc_a) differ in count",
    Reason.INVALID_VALUE: "a field's value is not acceptable (e.g. an unparseable timestamp)",
    Reason.DUPLICATE_ID: "another row of the batch has the same id",
    Reason.DUPLICATE_REQUEST: "an earlier row asks the very same edit (image, prompt, target)",
    Reason.TARGET_EQUALS_PROMPT: "the target is the prompt itself",
    Reason.TARGET_EQUALS_CURRENT: "the target equals the current answer (`pred`): nothing to edit",
    Reason.CONTRADICTORY_EDIT: "rows of the batch ask different targets for the same (image, prompt)",
    Reason.LOCALITY_OVERLAPS_SUBJECT: "a locality probe mentions the edited subject or repeats the prompt",
    Reason.IMAGE_PATH_ESCAPES_ROOT: "an image path leaves the allowed image roots (.., absolute, symlink)",
    Reason.UNSUPPORTED_IMAGE_TYPE: "an image is not of a supported type (png, jpeg, bmp, gif, webp, tiff)",
    Reason.IMAGE_MISSING: "an image file does not exist under the image roots",
    Reason.IMAGE_TOO_LARGE: "an image exceeds the byte or pixel limit (decompression-bomb guard)",
    Reason.IMAGE_UNDECODABLE: "an image file's bytes do not decode as an image",
    Reason.IMAGE_TRUNCATED: "an image file is truncated or corrupt past its header",
    Reason.INVALID_ID_CHARS: "the id holds characters outside A-Z a-z 0-9 . _ - (e.g. '/', spaces, newlines, "
                             "markup), starts with '.' or '-', or is '.' / '..' (schemas/ids.py)",
    Reason.ID_TOO_LONG: "the id is longer than 128 characters (schemas/ids.py)",
    Reason.LINE_TOO_LONG: "a JSONL line exceeds the per-line byte cap (ODEDIT_MAX_LINE_BYTES); only its start is kept",
}


@dataclass(frozen=True)
class Issue:
    """One problem found on one row: which field, which reason, and a human message."""

    field: str | None
    reason: Reason
    message: str

    def to_dict(self) -> dict:
        return {"field": self.field, "reason": str(self.reason), "message": self.message}


def reason_table_markdown() -> str:
    """The reason-code table, as Markdown (for docs)."""
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| `{r.value}` | {r.description} |" for r in Reason]
    return "\n".join(lines)
