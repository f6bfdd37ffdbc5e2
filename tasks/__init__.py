"""Prefect tasks: thin wrappers over `odedit` functions. Retries are declared here where a
retry can help (file I/O, registry calls) and nowhere else (a diverged optimisation would
diverge again)."""


def run_logger():
    """Prefect's run logger, or a plain logger when called outside a run (flow.fn / task.fn)."""
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("odedit.lifecycle")


def is_deterministic(exc: BaseException | None) -> bool:
    """An error a retry cannot fix: a refusal (promotion rules, gate), an integrity mismatch, a
    registry answer that is definite (not "unavailable"), a bad argument."""
    from odedit.integrity import IntegrityError
    from odedit.registry import RegistryError, RegistryUnavailable

    if exc is None or isinstance(exc, RegistryUnavailable):
        return False
    if type(exc).__name__ == "PromotionRefused":
        return True
    return isinstance(exc, (IntegrityError, RegistryError, ValueError, KeyError, TypeError))


def transient_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only errors that another attempt might not hit, so a
    refusal prints its one line once instead of three tracebacks."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as e:  # noqa: BLE001 - classified below
            exc = e
    return not is_deterministic(exc)
