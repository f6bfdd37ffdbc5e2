"""Clean operations: a deterministic refusal is not retried (one line, not three tracebacks),
a transient registry error is; model loading prints no progress bars into logs."""

from prefect.states import Failed

from odedit.integrity import IntegrityError
from odedit.registry import RegistryError, RegistryUnavailable
from tasks import transient_only
from tasks.lifecycle import PromotionRefused


def test_refusals_are_not_retried_transient_errors_are():
    def retried(exc):
        return transient_only(None, None, Failed(data=exc))

    assert not retried(PromotionRefused("m has no candidate"))
    assert not retried(IntegrityError("digest mismatch"))
    assert not retried(RegistryError("registered but no champion"))
    assert not retried(ValueError("bad version"))
    assert retried(RegistryUnavailable("500 from server"))
    assert retried(OSError("connection reset"))


def test_model_loading_prints_no_progress_bar():
    import odedit  # noqa: F401  (sets the defaults before transformers is imported)
    from transformers.utils import logging as hf_logging

    assert not hf_logging.is_progress_bar_enabled()
