"""The ONE state directory of a local installation and everything derived from it.

    $ODEDIT_STATE_DIR (default ./state)
      mlflow.db        MLflow tracking + model registry (SQLite), unless MLFLOW_TRACKING_URI is set
      mlartifacts/     MLflow artifacts (runs, logged models)
      prefect/         PREFECT_HOME (ephemeral API database, local results)
      inbox/           request files waiting for the scheduled batch; done/ and quarantine/ beside it
      work/            per-batch scratch space (checkpoints of a batch in progress)

A user can look at it and delete it. Any remote tracking server works by setting
MLFLOW_TRACKING_URI (or passing --tracking-uri); the rest stays local.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_STATE = "ODEDIT_STATE_DIR"
ENV_ACTOR = "ODEDIT_ACTOR"  # who moves the champion (promote / rollback), e.g. an email
DEFAULT_MODEL_NAME = "odedit-embedded"
EXPERIMENT = "odedit-batches"


def state_dir(create: bool = True) -> Path:
    d = Path(os.environ.get(ENV_STATE) or "state").expanduser().resolve()  # "" = not set (prefect.yaml)
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def actor(explicit: str | None = None) -> str:
    """Who is acting, for the audit trail: `explicit` (--actor), else $ODEDIT_ACTOR, else the
    login user at this host (`user@host`, marked `(login)` so it is never mistaken for a
    configured identity). Never silently "unknown": with no login name at all it says so."""
    if explicit and explicit.strip():
        return explicit.strip()
    if os.environ.get(ENV_ACTOR, "").strip():
        return os.environ[ENV_ACTOR].strip()
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "no-login-name"
    return f"{user}@{socket.gethostname()} (login)"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{state_dir() / 'mlflow.db'}"


def artifact_root() -> str:
    d = state_dir() / "mlartifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d.as_uri()


def prefect_home() -> Path:
    return state_dir() / "prefect"


def inbox_dir() -> Path:
    return state_dir() / "inbox"


def envsets_dir() -> Path:
    """Environment sets as `datasets` Datasets, one directory per request hash."""
    path = state_dir() / "envsets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_cache_dir() -> Path:
    """The lifelong editor's key covariances of preserved knowledge (`nullspace.KeyBank.add`)."""
    return state_dir() / "cache" / "keys"


def work_dir() -> Path:
    d = state_dir() / "work"
    d.mkdir(parents=True, exist_ok=True)
    return d


def configure_environment() -> None:
    """Point Prefect and MLflow at the state directory unless the caller chose otherwise.
    Call before importing prefect (its settings are read at import). A variable set to ""
    (prefect.yaml's job variables copy unset ones as "") counts as not set."""
    for k in ("MLFLOW_TRACKING_URI", ENV_STATE, ENV_ACTOR):
        if os.environ.get(k) == "":
            del os.environ[k]
    os.environ.setdefault("PREFECT_HOME", str(prefect_home()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    # A registry call must fail in bounded time, not retry for minutes (MLflow's defaults: 7
    # retries, backoff factor 2, 120 s timeout). With these, one call gives up after about
    # 3 x 5 s + 1 + 2 s; the Prefect tasks retry it at most ODEDIT_REGISTRY_RETRIES times.
    for k, v in REGISTRY_HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


REGISTRY_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def _lock_path(key: str) -> Path:
    d = state_dir() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return d / f"{safe}.lock"


def model_lock(name: str, timeout: float = -1):
    """The state directory's lock of one registered model name: held around a whole batch
    (read registered hashes -> edit -> register -> set alias) and around `registry init`, so the
    same batch started twice registers once and two first uses do not both bootstrap. It is a
    file lock: it serialises processes sharing this state directory (with a remote tracking
    server, processes on other machines are not covered)."""
    from filelock import FileLock

    return FileLock(str(_lock_path(f"model-{name}")), timeout=timeout)


def store_lock(timeout: float = -1):
    """Held around the first use of the local SQLite store in a process (MLflow migrations)."""
    from filelock import FileLock

    return FileLock(str(_lock_path("mlflow-store")), timeout=timeout)
