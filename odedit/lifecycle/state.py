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
DEFAULT_MODEL_NAME = "odedit-embedded"
EXPERIMENT = "odedit-batches"


def state_dir(create: bool = True) -> Path:
    d = Path(os.environ.get(ENV_STATE, "state")).expanduser().resolve()
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


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


def work_dir() -> Path:
    d = state_dir() / "work"
    d.mkdir(parents=True, exist_ok=True)
    return d


def configure_environment() -> None:
    """Point Prefect and MLflow at the state directory unless the caller chose otherwise.
    Call before importing prefect (its settings are read at import)."""
    os.environ.setdefault("PREFECT_HOME", str(prefect_home()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
