"""Edit requests on their way in: reading batches (JSONL / Parquet / MMEdit JSON), validating
them (row checks, a Great Expectations suite over the batch, image checks) and quarantining
what is refused. The models themselves live in `schemas/`."""

from odedit.requests.io import (BatchError, BatchReadError, EmptyBatchError, RawRow,
                                UnsupportedBatchFormat, read_batch)
from odedit.requests.limits import ValidationLimits
from odedit.requests.reasons import DESCRIPTIONS, Issue, Reason
from odedit.requests.validate import ValidationResult, validate_batch, write_quarantine

__all__ = [
    "BatchError", "BatchReadError", "EmptyBatchError", "UnsupportedBatchFormat", "RawRow", "read_batch",
    "ValidationLimits", "Reason", "DESCRIPTIONS", "Issue", "ValidationResult", "validate_batch",
    "write_quarantine",
]
