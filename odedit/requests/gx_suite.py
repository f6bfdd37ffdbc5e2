"""The Great Expectations suite over a batch seen as a table, and the mapping of every
unexpected row back to (row, field, reason).

This module owns: the table a batch becomes (one row per request, plain columns plus derived
columns such as token counts, "targets for this (image, prompt)", "a locality probe mentions
the subject"), the list of expectations with the field and reason each one blames, and running
them in an ephemeral GX context with progress bars off. Checks that are not about a table
(types, UTF-8, image files) live in `validate` and `images`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from odedit.requests.limits import ValidationLimits
from odedit.requests.reasons import Issue, Reason

REQUIRED = ("id", "image", "src", "alt")
TEXT_COLUMNS = ("id", "image", "src", "alt", "pred", "subject")
PROMPT_PROBES = ("rephrase", "train_rephrase", "loc", "m_loc_q")
ANSWER_PROBES = ("loc_ans", "m_loc_a")

_WS = re.compile(r"\s+")


def _norm(text: Any) -> str | None:
    """Key for comparing texts: case-folded, whitespace collapsed, trailing punctuation off."""
    if not isinstance(text, str):
        return None
    return _WS.sub(" ", text).strip().casefold().rstrip(" ?.!") or None


def _norm_path(path: Any) -> str | None:
    if not isinstance(path, str) or not path.strip():
        return None
    p = path.strip().replace("\\", "/")
    while "//" in p:
        p = p.replace("//", "/")
    return p[2:] if p.startswith("./") else p


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class Check:
    """One expectation, and whom to blame for each row it finds unexpected."""

    expectation: Any
    field: str                      # request field to blame (or see field_column)
    reason: Reason
    message: str                    # format string; may use {value} and {limit}
    column: str | None = None       # column whose value goes into {value}
    field_column: str | None = None  # per-row field name to blame instead of `field`
    keep_first: bool = False        # only later rows of a duplicate group are rejected
    limit: Any = None
    cross_row: bool = False         # compares rows with each other (run on rows that passed the rest)


def build_table(rows: Sequence[tuple[int, Mapping[str, Any]]], limits: ValidationLimits) -> pd.DataFrame:
    """One table row per (row index, payload). Text columns are whitespace-stripped (so a
    whitespace-only target has length 0); derived columns start with `_`."""
    recs = []
    prompt_texts: list[str] = []
    prompt_owner: list[tuple[int, str]] = []
    answer_texts: list[str] = []
    answer_owner: list[tuple[int, str]] = []
    for pos, (row_index, p) in enumerate(rows):
        rec: dict[str, Any] = {"_row": row_index}
        for col in TEXT_COLUMNS:
            v = p.get(col)
            rec[col] = v.strip() if isinstance(v, str) else None
        src_key, alt_key = _norm(p.get("src")), _norm(p.get("alt"))
        rec["_image_key"] = _norm_path(p.get("image"))
        rec["_src_key"] = src_key
        rec["_alt_key"] = alt_key
        rec["_alt_is_src"] = bool(alt_key and alt_key == src_key)
        rec["_alt_is_pred"] = bool(alt_key and alt_key == _norm(p.get("pred")))
        subject = _norm(p.get("subject"))
        # Overlap = the probe is about the edit's subject: it mentions the subject, or (text-only
        # loc) repeats the edit prompt, or (m_loc) repeats it on the SAME image. The edit prompt
        # on another subject's image is the classic hard negative and is accepted; an m_loc
        # image with the edit image's CONTENT under another path is caught in `validate`.
        m_loc_paths = [_norm_path(x) for x in _as_list(p.get("m_loc"))]
        for probe, flag in (("loc", "_loc_overlap"), ("m_loc_q", "_m_loc_q_overlap")):
            hit = False
            for i, q in enumerate(_as_list(p.get(probe))):
                qn = _norm(q) or ""
                repeats = bool(src_key and qn == src_key)
                if probe == "m_loc_q":
                    repeats = repeats and i < len(m_loc_paths) and m_loc_paths[i] == rec["_image_key"]
                if (subject and re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", qn)) or repeats:
                    hit = True
                    break
            rec[flag] = hit
        for probe in PROMPT_PROBES:
            for q in _as_list(p.get(probe)):
                prompt_texts.append(q)
                prompt_owner.append((pos, probe))
        for probe in ANSWER_PROBES:
            for a in _as_list(p.get(probe)):
                answer_texts.append(a)
                answer_owner.append((pos, probe))
        recs.append(rec)

    if not recs:
        return pd.DataFrame()
    df = pd.DataFrame.from_records(recs)
    n = len(df)
    # token counts, one tokenizer call per column for speed
    for col, out in (("src", "_src_tokens"), ("alt", "_alt_tokens")):
        vals = [p.get(col) if isinstance(p.get(col), str) else None for _, p in rows]
        idx = [i for i, v in enumerate(vals) if v is not None]
        counts = limits.token_counts([vals[i] for i in idx])
        col_vals = [float("nan")] * n
        for i, c in zip(idx, counts):
            col_vals[i] = float(c)
        df[out] = col_vals
    for texts, owners, out in ((prompt_texts, prompt_owner, "_probe_prompt"),
                               (answer_texts, answer_owner, "_probe_answer")):
        worst = [0.0] * n
        worst_field = [""] * n
        for (pos, probe), c in zip(owners, limits.token_counts(texts)):
            if c > worst[pos]:
                worst[pos], worst_field[pos] = float(c), probe
        df[out + "_tokens"] = worst
        df[out + "_field"] = worst_field
    return cross_row_columns(df)


def cross_row_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Columns that compare rows with each other, computed over exactly the rows of `df`:
    how many distinct targets the batch asks for this row's (image, prompt)."""
    df = df.copy()
    if len(df):
        keyed = df[["_image_key", "_src_key", "_alt_key"]]
        df["_targets_per_key"] = keyed.groupby(["_image_key", "_src_key"], dropna=True)["_alt_key"] \
            .transform("nunique").astype("float")
    else:
        df["_targets_per_key"] = pd.Series(dtype="float")
    return df


def build_checks(limits: ValidationLimits) -> list[Check]:
    import great_expectations.expectations as gxe

    checks: list[Check] = []
    for col in REQUIRED:
        checks.append(Check(gxe.ExpectColumnValuesToNotBeNull(column=col), col, Reason.MISSING_FIELD,
                            "required field is missing or null"))
    for col in REQUIRED:
        checks.append(Check(gxe.ExpectColumnValueLengthsToBeBetween(column=col, min_value=1), col,
                            Reason.EMPTY_FIELD, "is empty or whitespace-only"))
    for col in TEXT_COLUMNS:
        checks.append(Check(gxe.ExpectColumnValueLengthsToBeBetween(column=col, max_value=limits.max_text_chars),
                            col, Reason.TEXT_TOO_LONG, "text longer than {limit} characters",
                            limit=limits.max_text_chars))
    checks += [
        Check(gxe.ExpectColumnValuesToBeUnique(column="id"), "id", Reason.DUPLICATE_ID,
              "id {value!r} occurs more than once in the batch", column="id", cross_row=True),
        Check(gxe.ExpectColumnValuesToBeBetween(column="_src_tokens", max_value=limits.max_prompt_tokens),
              "src", Reason.PROMPT_TOO_LONG, "prompt is {value:.0f} tokens, the model allows {limit}",
              column="_src_tokens", limit=limits.max_prompt_tokens),
        Check(gxe.ExpectColumnValuesToBeBetween(column="_alt_tokens", max_value=limits.max_target_tokens),
              "alt", Reason.TARGET_TOO_LONG, "target is {value:.0f} tokens, the model may produce {limit}",
              column="_alt_tokens", limit=limits.max_target_tokens),
        Check(gxe.ExpectColumnValuesToBeBetween(column="_probe_prompt_tokens", max_value=limits.max_prompt_tokens),
              "rephrase", Reason.PROBE_TOO_LONG, "a probe is {value:.0f} tokens, the model allows {limit}",
              column="_probe_prompt_tokens", field_column="_probe_prompt_field", limit=limits.max_prompt_tokens),
        Check(gxe.ExpectColumnValuesToBeBetween(column="_probe_answer_tokens", max_value=limits.max_target_tokens),
              "loc_ans", Reason.PROBE_TOO_LONG, "a probe answer is {value:.0f} tokens, the model may produce {limit}",
              column="_probe_answer_tokens", field_column="_probe_answer_field", limit=limits.max_target_tokens),
        # GX has no "pair not equal" expectation: the comparison is a derived column
        Check(gxe.ExpectColumnValuesToBeInSet(column="_alt_is_src", value_set=[False]), "alt",
              Reason.TARGET_EQUALS_PROMPT, "target is the same text as the prompt"),
        Check(gxe.ExpectColumnValuesToBeInSet(column="_alt_is_pred", value_set=[False]), "alt",
              Reason.TARGET_EQUALS_CURRENT, "target equals the current answer `pred`; nothing to edit"),
        Check(gxe.ExpectColumnValuesToBeBetween(column="_targets_per_key", max_value=1), "alt",
              Reason.CONTRADICTORY_EDIT,
              "{value:.0f} different targets are asked for this (image, prompt) in the batch",
              column="_targets_per_key", cross_row=True),
        Check(gxe.ExpectCompoundColumnsToBeUnique(column_list=["_image_key", "_src_key", "_alt_key"]), "alt",
              Reason.DUPLICATE_REQUEST, "an earlier row asks the same (image, prompt, target)", keep_first=True,
              cross_row=True),
        Check(gxe.ExpectColumnValuesToBeInSet(column="_loc_overlap", value_set=[False]), "loc",
              Reason.LOCALITY_OVERLAPS_SUBJECT, "a locality prompt mentions the subject or repeats the prompt"),
        Check(gxe.ExpectColumnValuesToBeInSet(column="_m_loc_q_overlap", value_set=[False]), "m_loc_q",
              Reason.LOCALITY_OVERLAPS_SUBJECT,
              "a locality question mentions the subject or repeats the prompt on the edit image"),
    ]
    for i, check in enumerate(checks):
        check.expectation.meta = {"check": i, "reason": str(check.reason), "field": check.field}
    return checks


@dataclass
class SuiteOutcome:
    success: bool
    result: dict                                            # the GX result as JSON
    issues: dict[int, list[Issue]] = field(default_factory=dict)  # row index -> issues


_quiet = False


def _silence() -> None:
    global _quiet
    if not _quiet:
        for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _quiet = True


def run_suite(df: pd.DataFrame, limits: ValidationLimits, suite_name: str = "odedit_edit_batch",
              scope: str = "all") -> SuiteOutcome:
    """Run the suite on `df` (from `build_table`) and map unexpected rows to issues. `scope`:
    "row" = per-row checks only, "cross" = cross-row checks only (duplicates, contradictions;
    `validate` runs them on the rows that passed every per-row check), "all" = both."""
    _silence()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if df.empty:
        return SuiteOutcome(True, {"success": True, "results": [], "note": "no rows reached the table"})
    checks = build_checks(limits)
    if scope != "all":
        checks = [c for c in checks if c.cross_row == (scope == "cross")]
        for i, check in enumerate(checks):
            check.expectation.meta = {**(check.expectation.meta or {}), "check": i}
    if scope in ("cross", "all"):
        df = cross_row_columns(df)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = context.data_sources.add_pandas("requests").add_dataframe_asset("batch") \
        .add_batch_definition_whole_dataframe("whole")
    # expectations given at construction: add_expectation() would re-serialise the suite each time
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=[c.expectation for c in checks]))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite))
    res = vd.run(
        batch_parameters={"dataframe": df.reset_index(drop=True)},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]},
    )
    by_row = df.set_index("_row", drop=False)
    issues: dict[int, list[Issue]] = {}
    for r in res.results:
        meta = r.expectation_config.meta or {}
        check = checks[int(meta["check"])]
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise RuntimeError(f"GX expectation {r.expectation_config.type} raised: "
                               f"{r.exception_info.get('exception_message')}")
        if r.success:
            continue
        unexpected = [int(u["_row"]) for u in r.result.get("unexpected_index_list") or []]
        if check.keep_first:
            seen: set = set()
            keep = []
            cols = check.expectation.column_list
            for row in sorted(unexpected):
                key = tuple(by_row.at[row, c] for c in cols)
                if key in seen:
                    keep.append(row)
                seen.add(key)
            unexpected = keep
        for row in unexpected:
            value = by_row.at[row, check.column] if check.column else None
            fld = check.field
            if check.field_column:
                fld = by_row.at[row, check.field_column] or fld
            msg = check.message.format(value=value, limit=check.limit)
            issues.setdefault(row, []).append(Issue(fld, check.reason, msg))
    return SuiteOutcome(bool(res.success), res.to_json_dict(), issues)
