"""Edit requests on their way in: reading batches (JSONL / Parquet / MMEdit JSON), validating
them (row checks, a Great Expectations suite over the batch, image checks) and quarantining
what is refused. The models themselves live in `schemas/`."""

from odedit.requests.io import (BatchError, BatchReadError, BatchTooLarge, EmptyBatchError, NotARegularFile,
                                RawRow, ReadLimits, UnsupportedBatchFormat, inspect_batch, read_batch)
from odedit.requests.limits import ValidationLimits
from odedit.requests.reasons import DESCRIPTIONS, Issue, Reason
from odedit.requests.validate import ValidationResult, validate_batch, write_quarantine

__all__ = [
    "BatchError", "BatchReadError", "BatchTooLarge", "EmptyBatchError", "NotARegularFile", "UnsupportedBatchFormat",
    "RawRow", "ReadLimits", "inspect_batch", "read_batch",
    "ValidationLimits", "Reason", "DESCRIPTIONS", "Issue", "ValidationResult", "validate_batch",
    "write_quarantine",
]
