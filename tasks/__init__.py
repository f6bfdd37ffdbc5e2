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
