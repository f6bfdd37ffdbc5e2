"""The MLflow side of odedit, and the one library module that imports mlflow.

It owns: connecting (a local SQLite store + file artifacts under the state directory by
default, any tracking URI by configuration), one MLflow run per batch (params, metrics,
artifacts), registered model versions (base reference + composed delta, logged as a
models-from-code pyfunc, see `odedit.registry_model`), their lineage (`odedit.parent_version`
tags), the `champion` / `candidate` aliases, and reading all of it back for the audit history.

Versions are never mutated: only aliases and tags change after creation. A version is created
with all its tags in ONE call (`register_model(..., tags=...)`), so a crash leaves either no
version or a complete one; a complete version whose `candidate` alias was not set yet is
repaired by `repair_candidate` on the next batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException, RestException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from odedit import integrity
from odedit.integrity import IntegrityError  # noqa: F401  (re-exported: registry.IntegrityError)
from odedit.lifecycle import state

T = "odedit."
CHAMPION, CANDIDATE = "champion", "candidate"
MODEL_CODE = Path(__file__).with_name("registry_model.py")
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "prompt")]),
                           outputs=Schema([ColSpec("string", "answer")]))
PIP = ["torch==2.13.0", "transformers>=5.23,<5.24", "mlflow>=3.17,<3.18", "pillow", "pandas"]


def odedit_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("odedit")
    except PackageNotFoundError:
        return None


def pip_requirements() -> list[str]:
    """PIP plus `odedit==<installed version>`: the logged shim imports the installed odedit."""
    v = odedit_version()
    return PIP + ([f"odedit=={v}"] if v else [])


class RegistryError(RuntimeError):
    pass


class RegistryUnavailable(RegistryError):
    """The registry could not be read or written (server error, connection refused, timeout):
    NOT the same as "absent". Callers must change nothing when they see it."""

    def __init__(self, uri: str, cause: str = ""):
        self.uri, self.cause = str(uri), str(cause)
        super().__init__(f"registry unreachable at {self.uri}: {self.cause}")

    def __reduce__(self):  # picklable (Prefect may persist task exceptions)
        return (RegistryUnavailable, (self.uri, self.cause))


def _is_absent(exc: BaseException) -> bool:
    """A definite "does not exist" answer from the registry (vs. any failure to read)."""
    if not isinstance(exc, MlflowException):
        return False
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # a missing alias is reported as INVALID_PARAMETER_VALUE "... alias X not found"
    return code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc) and "not found" in str(exc)


def _unavailable(client, exc: BaseException) -> RegistryUnavailable:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RegistryUnavailable(getattr(client, "tracking_uri", "?"), f"{type(exc).__name__}: {msg[:300]}")


def probe(client: MlflowClient) -> None:
    """One cheap read; raises RegistryUnavailable when the registry cannot be reached."""
    try:
        client.search_registered_models(max_results=1)
    except Exception as exc:
        raise _unavailable(client, exc) from exc


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- connection
_INITIALISED: set[str] = set()


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """Point mlflow at `tracking_uri` (default: MLFLOW_TRACKING_URI or the state dir's SQLite).
    The first use of a SQLite store in a process runs under the state directory's store lock,
    so two processes starting on an empty state dir do not run MLflow's migrations at once."""
    uri = tracking_uri or state.tracking_uri()
    if uri.startswith("sqlite:") and uri not in _INITIALISED:
        with state.store_lock():
            client = _connect(uri)
            client.search_experiments(max_results=1)  # creates / migrates the database
            client.search_registered_models(max_results=1)
        _INITIALISED.add(uri)
        return client
    return _connect(uri)


def _set_uris(tracking: str, registry: str | None = None) -> None:
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry or tracking)
    for k, v in before.items():  # mlflow exports the URI to the environment; the caller's choice stands
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _connect(uri: str) -> MlflowClient:
    _set_uris(uri)
    return MlflowClient(uri, uri)


# MLflow's UI opens an experiment without this tag in its GenAI view; ours are model runs
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str = state.EXPERIMENT) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get("mlflow.experimentKind") is None:
            for k, v in EXPERIMENT_KIND.items():
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    local = client.tracking_uri.startswith("sqlite:") or client.tracking_uri.startswith("file:")
    try:
        return client.create_experiment(name, artifact_location=state.artifact_root() if local else None,
                                        tags=EXPERIMENT_KIND)
    except MlflowException:  # created concurrently
        return client.get_experiment_by_name(name).experiment_id


def code_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown" if out.returncode == 0 else "unknown"
    except Exception:
        return "unknown"


def base_ref_for(model: str | Path | None) -> str:
    """How a version names its base: `odedit:embedded` for the shipped model, else the path/id."""
    from odedit.lifecycle.models import EMBEDDED_REF

    if model is None:
        return EMBEDDED_REF
    try:
        from odedit.models.embedded import default_model_path

        if Path(model).resolve() == default_model_path().resolve():
            return EMBEDDED_REF
    except FileNotFoundError:
        pass
    p = Path(str(model)).expanduser()
    return str(p.resolve()) if p.exists() else str(model)


# ----------------------------------------------------------------------------- reading
def _norm(v):
    """Versions as strings everywhere (MLflow returns ints from some calls, strings from others)."""
    if v is not None and hasattr(v, "_version"):
        v._version = str(v._version)
    return v


def model_exists(client: MlflowClient, name: str) -> bool:
    """Whether `name` is registered; RegistryUnavailable when the registry cannot say."""
    try:
        client.get_registered_model(name)
        return True
    except Exception as exc:
        if _is_absent(exc):
            return False
        raise _unavailable(client, exc) from exc


def alias_version(client: MlflowClient, name: str, alias: str):
    """The ModelVersion an alias points at, or None when the alias (or model) does not exist;
    RegistryUnavailable when the registry could not be read (never read as "absent")."""
    try:
        return _norm(client.get_model_version_by_alias(name, alias))
    except Exception as exc:
        if _is_absent(exc):
            return None
        raise _unavailable(client, exc) from exc


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).aliases)


def get_version(client: MlflowClient, name: str, version: str | int):
    try:
        return _norm(client.get_model_version(name, str(version)))
    except Exception as exc:
        if _is_absent(exc):
            raise RegistryError(f"{name} has no version {version}") from exc
        raise _unavailable(client, exc) from exc


def all_versions(client: MlflowClient, name: str) -> list:
    vs = client.search_model_versions(f"name = '{name}'", max_results=10000)
    return sorted((_norm(v) for v in vs), key=lambda v: int(v.version))


def registered_hashes(client: MlflowClient, name: str) -> dict[str, str]:
    """request hash -> version, over every version of `name` (promoted or not)."""
    out: dict[str, str] = {}
    if not model_exists(client, name):
        return out
    for v in all_versions(client, name):
        for h in json.loads(v.tags.get(T + "request_hashes", "[]")):
            out.setdefault(h, v.version)
    return out


def lineage(client: MlflowClient, name: str, version: str | int) -> list:
    """The version and its ancestors via parent tags, newest first, base (version 1) last."""
    chain, seen = [], set()
    v = get_version(client, name, version)
    while v is not None and v.version not in seen:
        seen.add(v.version)
        chain.append(v)
        parent = v.tags.get(T + "parent_version")
        v = get_version(client, name, parent) if parent else None
    return chain


def descends(client: MlflowClient, name: str, version: str | int, ancestor: str | int) -> bool:
    """Whether `ancestor` is `version` or one of its ancestors (parent tags)."""
    return str(ancestor) in {v.version for v in lineage(client, name, version)}


def check_champion_audited(client: MlflowClient, name: str) -> None:
    """Refuse to build on a champion alias that was moved outside odedit (MLflow's UI or API
    set it, skipping the gate re-check and the audit trail): the alias must point where odedit's
    champion history last put it. Raises RegistryError saying how to record the move."""
    champ = alias_version(client, name, CHAMPION)
    hist = champion_history(client, name)
    if champ is None or not hist:
        return
    last = str(hist[-1].get("version"))
    if champ.version != last:
        raise RegistryError(
            f"{name}: the champion alias points at version {champ.version}, but odedit last moved it to "
            f"{last}: it was moved outside odedit (no gate re-check, no audit record); nothing changed. "
            f"Record it with `odedit rollback {name} --to {champ.version} --note WHY` (add --force if that "
            f"version never passed a gate), or move it back with `odedit rollback {name} --to {last}`")


def build_target(client: MlflowClient, name: str):
    """The version a new batch builds on: the NEWEST gated version of the champion's lineage,
    i.e. the `candidate` when it passed its gate and descends from the champion, else the
    champion. (Two batches without a promote in between thus chain: the second candidate
    holds both batches' edits.)"""
    champ = alias_version(client, name, CHAMPION)
    cand = alias_version(client, name, CANDIDATE)
    if champ is None:
        return None
    if cand is not None and cand.version != champ.version and cand.tags.get(T + "gate") == "passed" \
            and descends(client, name, cand.version, champ.version):
        return cand
    return champ


def base_ref(client: MlflowClient, name: str) -> str:
    return client.get_registered_model(name).tags[T + "base_ref"]


def verify_version(mv, model_dir: str | Path, check_delta: bool = True) -> None:
    """Check a downloaded version (its model directory) against the digests in its version TAGS
    (registry database, not the artifact store) and refuse a missing or empty delta unless the
    version is the base. Raises IntegrityError. A version registered before digests existed is
    refused too unless ODEDIT_ALLOW_UNVERIFIED=1."""
    model_dir = Path(model_dir)
    what = f"version {mv.version}"
    expected = {k: mv.tags.get(T + tag) for k, tag in integrity.TAG_KEYS.items()}
    if not any(expected.values()) and os.environ.get("ODEDIT_ALLOW_UNVERIFIED") == "1":
        return
    arts = model_dir / "artifacts"
    parts = {"delta": arts / "delta", "ledger": arts / "ledger", "lineage": arts / "lineage.json",
             "code": model_dir / MODEL_CODE.name}
    found = {k: ((integrity.digest_dir(p) if p.is_dir() else "<missing>") if k in ("delta", "ledger")
                 else (integrity.digest_file(p) if p.is_file() else "<missing>")) for k, p in parts.items()}
    integrity.compare(expected, found, what)
    if check_delta:
        integrity.check_delta_present(arts / "delta", mv.tags.get(T + "kind"), what)


def download_model(client: MlflowClient, name: str, version: str | int, dst: str | Path,
                   verify: bool = True, check_delta: bool = True) -> Path:
    """The whole model directory of a version (MLmodel, code shim, artifacts/), downloaded
    under `dst` and, unless verify=False, checked against the version's tags (IntegrityError;
    check_delta=False: digests only, a non-base version with an empty delta passes)."""
    mv = get_version(client, name, version)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    # `models:/` URIs resolve through mlflow's GLOBAL registry URI: point it at this client's
    # registry for the call (a bare MlflowClient on a server must not read the local store)
    prev = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    _set_uris(client.tracking_uri, client._registry_uri)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst),
                                                   tracking_uri=client.tracking_uri)
    finally:
        _set_uris(*prev)
    if verify:
        verify_version(mv, path, check_delta)
    return Path(path)


def download_delta(client: MlflowClient, name: str, version: str | int, dst: str | Path) -> Path:
    """The composed delta (relative to the base) of a version, downloaded under `dst` and
    verified against the version's tags (IntegrityError)."""
    return download_model(client, name, version, dst) / "artifacts" / "delta"


def download_version(client: MlflowClient, name: str, version: str | int, dst: str | Path) -> tuple[Path, Path]:
    """(delta dir, ledger dir) of a version, downloaded under `dst` and verified against the
    version's digest tags (IntegrityError on any difference: delta, ledger, lineage, code shim).
    A version registered before ledgers existed gets an empty ledger directory."""
    from odedit.lifecycle.ledger import empty_ledger

    delta = download_delta(client, name, version, dst)
    ledger = delta.parent / "ledger"
    if not (ledger / "ledger.jsonl").is_file():
        empty_ledger(ledger)
    return delta, ledger


def download_ledger(client: MlflowClient, name: str, version: str | int, dst: str | Path):
    """The `Ledger` of a version (odedit.lifecycle.ledger), downloaded under `dst`."""
    from odedit.lifecycle.ledger import load_ledger

    return load_ledger(download_version(client, name, version, dst)[1])


def download_probes(client: MlflowClient, name: str, dst: str | Path):
    """(probes, image_dir) of the model's fixed regression probe set."""
    from odedit.lifecycle.gate import probes_from_jsonl

    run_id = client.get_registered_model(name).tags.get(T + "probes_run")
    if not run_id:
        return [], None
    path = Path(client.download_artifacts(run_id, "probes", str(dst)))
    return probes_from_jsonl((path / "probes.jsonl").read_text()), path / "images"


def run_json(client: MlflowClient, run_id: str, artifact: str) -> dict | list | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            p = client.download_artifacts(run_id, artifact, tmp)
        except Exception:
            return None
        return json.loads(Path(p).read_text())


def champion_history(client: MlflowClient, name: str) -> list[dict]:
    return json.loads(client.get_registered_model(name).tags.get(T + "champion_history", "[]"))


def runs_mentioning(client: MlflowClient, request_id: str) -> list:
    """Batch runs whose request ids include `request_id`, newest first."""
    exp = client.get_experiment_by_name(state.EXPERIMENT)
    if exp is None:
        return []
    # LIKE only narrows the search: every character of the JSON-quoted id that is not a plain
    # letter, digit, '.' or '-' (quotes, backslashes, LIKE's own % and _) becomes the
    # one-character wildcard `_`, so the filter string needs no escaping and can only match
    # MORE runs; the exact test is the membership check on the parsed JSON list below.
    needle = "".join(c if (c.isascii() and c.isalnum()) or c in ".-" else "_" for c in json.dumps(request_id))
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], f"tags.`{T}request_ids` LIKE '%{needle}%'",
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        runs += [r for r in page if _mentions(r, request_id)]
        token = page.token
        if not token:
            return runs


def _mentions(run, request_id: str) -> bool:
    try:
        ids = json.loads(run.data.tags.get(T + "request_ids") or "[]")
    except ValueError:
        return False
    return isinstance(ids, list) and request_id in ids


# ----------------------------------------------------------------------------- writing
def _set_champion(client: MlflowClient, name: str, version: str, action: str, note: str = "",
                  actor: str | None = None) -> None:
    """Move the alias and record the move: in the model's champion history (who, when, why),
    on the new champion (`odedit.last_<action>_{at,by,note}`) and, for a rollback, on the version
    rolled back from (`odedit.rolled_back`: when, by whom, to which version, why)."""
    hist = champion_history(client, name)
    prev = alias_version(client, name, CHAMPION)
    who, at = state.actor(actor), now()
    move = {"version": str(version), "from": prev.version if prev else None, "action": action,
            "at": at, "by": who, "note": note}
    hist.append(move)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, T + "champion_history", json.dumps(hist[-200:]))
    for key, value in (("at", at), ("by", who), ("note", note)):
        client.set_model_version_tag(name, str(version), T + f"last_{action}_{key}", value)
    if action == "rollback" and prev is not None and prev.version != str(version):
        client.set_model_version_tag(name, prev.version, T + "rolled_back",
                                     json.dumps({"at": at, "by": who, "to": str(version), "note": note}))


def log_version(client: MlflowClient, run_id: str, name: str, base: str, delta_dir: Path, tags: dict,
                chain: list[str], ledger_dir: Path | None = None) -> str:
    """Log the pyfunc (base reference + composed delta + edit ledger + `integrity.json`, code:
    the `registry_model.py` shim) to `run_id` and register it as a new version of `name` with
    all its tags in one call, the sha256 digests of delta, ledger, lineage and code included
    (`odedit.delta_sha256`, ...: see odedit.integrity). Returns the version number."""
    from odedit.lifecycle.ledger import empty_ledger

    kind = tags.get(T + "kind")
    with tempfile.TemporaryDirectory() as tmp:
        if ledger_dir is None:
            ledger_dir = empty_ledger(Path(tmp) / "ledger")
        lin = Path(tmp) / "lineage.json"
        lin.write_text(json.dumps({"base_ref": base, "model": name, "chain": chain, "kind": kind,
                                   "parent_version": tags.get(T + "parent_version")}, indent=2))
        found = integrity.digests(delta_dir, ledger_dir, lin, MODEL_CODE)
        man = integrity.write_manifest(Path(tmp) / integrity.MANIFEST, {**found, "code_file": MODEL_CODE.name},
                                       kind, odedit_version())
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE),
                artifacts={"delta": str(delta_dir), "lineage": str(lin), "ledger": str(ledger_dir),
                           "integrity": str(man)},
                pip_requirements=pip_requirements(), signature=SIGNATURE,
            )
    # leaving `start_run` marked the batch run FINISHED; it is finished only once the version
    # exists (tasks.registry.finish_run), so a kill in between leaves it RUNNING -> closed as stale
    client.update_run(run_id, status="RUNNING")
    tags = {**tags, **{T + tag: found[k] for k, tag in integrity.TAG_KEYS.items()}}
    mv = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def init_model(client: MlflowClient, name: str, model: str | Path | None, probes, probe_dir: Path | None) -> str:
    """Register version 1 = the base model itself (empty delta) and make it champion. The
    fixed regression probe set is logged with it. Idempotent: returns the existing champion."""
    from odedit.delta import Delta
    from odedit.lifecycle.gate import probes_to_jsonl

    if model_exists(client, name) and alias_version(client, name, CHAMPION):
        return alias_version(client, name, CHAMPION).version
    base = base_ref_for(model)
    exp = experiment_id(client)
    run = client.create_run(exp, run_name=f"{name}-init", tags={T + "kind": "init", T + "model_name": name})
    with tempfile.TemporaryDirectory() as tmp:
        pdir = Path(tmp) / "probes"
        (pdir / "images").mkdir(parents=True)
        (pdir / "probes.jsonl").write_text(probes_to_jsonl(probes))
        if probe_dir:
            for p in probes:
                if p.image:
                    target = pdir / "images" / p.image
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes((Path(probe_dir) / p.image).read_bytes())
        client.log_artifacts(run.info.run_id, str(pdir), "probes")
        client.log_param(run.info.run_id, "base_model", base)
        client.log_param(run.info.run_id, "code_revision", code_revision())
        ddir = Delta({}, {}, {"kind": "base"}).save(Path(tmp) / "delta")
        if not model_exists(client, name):
            try:
                client.create_registered_model(name, tags={T + "base_ref": base, T + "probes_run": run.info.run_id},
                                               description="odedit: a base model and its audited edits")
            except MlflowException:
                pass
        version = log_version(client, run.info.run_id, name, base, ddir,
                              {T + "kind": "base", T + "request_hashes": "[]", T + "request_ids": "[]",
                               T + "run_id": run.info.run_id, T + "gate": "base", T + "created_at": now()}, [])
    client.set_terminated(run.info.run_id, "FINISHED")
    _set_champion(client, name, version, "init", "bootstrap: the base model")  # actor: state.actor()
    return version


def start_batch_run(client: MlflowClient, name: str, batch_id: str, params: dict, tags: dict) -> str:
    from mlflow.entities import Param, RunTag

    exp = experiment_id(client)
    run = client.create_run(exp, run_name=f"{name}-{batch_id}", tags={
        T + "kind": "edit-batch", T + "model_name": name, T + "batch_id": batch_id,
        T + "status": "running", T + "host": socket.gethostname(), T + "pid": str(os.getpid()),
        **{k: str(v) for k, v in tags.items()}})
    ps = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(ps), 100):
        client.log_batch(run.info.run_id, params=ps[i:i + 100])
    return run.info.run_id


def _log_points(client: MlflowClient, run_id: str, points: Iterable[tuple[str, float | None, int]]) -> None:
    """(key, value, step) points in batches of 500 (MLflow's limit per call); None values skipped."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    ms = [Metric(k, float(v), ts, step) for k, v, step in points if v is not None]
    for i in range(0, len(ms), 500):
        client.log_batch(run_id, metrics=ms[i:i + 500])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float | None]) -> None:
    _log_points(client, run_id, ((k, v, 0) for k, v in metrics.items()))


def log_series(client: MlflowClient, run_id: str, series: dict[str, Sequence[float | None]]) -> None:
    """Step-indexed metrics (one point per optimisation step; None points are skipped)."""
    _log_points(client, run_id, ((k, v, step) for k, vs in series.items() for step, v in enumerate(vs)))


def log_artifacts(client: MlflowClient, run_id: str, directory: Path, path: str | None = None) -> None:
    client.log_artifacts(run_id, str(directory), path)


def set_run_tags(client: MlflowClient, run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status)


def close_stale_runs(client: MlflowClient, name: str) -> list[str]:
    """Batch runs of `name` left RUNNING by a process on this host that no longer exists
    (killed mid-batch) are marked KILLED. Returns their ids."""
    import psutil

    exp = client.get_experiment_by_name(state.EXPERIMENT)
    if exp is None:
        return []
    closed = []
    for r in client.search_runs([exp.experiment_id], f"tags.`{T}model_name` = '{name}' and attributes.status = 'RUNNING'"):
        if r.data.tags.get(T + "host") == socket.gethostname():
            pid = int(r.data.tags.get(T + "pid", "0") or 0)
            if pid and not psutil.pid_exists(pid):
                client.set_tag(r.info.run_id, T + "status", "killed")
                client.set_terminated(r.info.run_id, "KILLED")
                closed.append(r.info.run_id)
    return closed


def set_candidate(client: MlflowClient, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CANDIDATE, str(version))


def repair_candidate(client: MlflowClient, name: str) -> str | None:
    """A complete, gated version newer than both aliases whose alias step was interrupted
    becomes the candidate. Returns its version, or None when nothing needed repair. A version
    that was ever champion is not "interrupted" (it was promoted, then rolled back from)."""
    champ = alias_version(client, name, CHAMPION)
    cand = alias_version(client, name, CANDIDATE)
    floor = max(int(champ.version) if champ else 0, int(cand.version) if cand else 0)
    was_champion = {str(h.get(k)) for h in champion_history(client, name) for k in ("version", "from") if h.get(k)}
    newest = [v for v in all_versions(client, name)
              if int(v.version) > floor and v.tags.get(T + "gate") == "passed" and v.version not in was_champion]
    if not newest:
        return None
    set_candidate(client, name, newest[-1].version)
    return newest[-1].version


def move_champion(client: MlflowClient, name: str, version: str, action: str, note: str = "",
                  actor: str | None = None) -> None:
    """Point `champion` at `version` (promote / rollback); candidate is cleared when promoted,
    and by a rollback when it carries the edits rolled back (it descends from the version rolled
    back from, which is not an ancestor of the restored one): no later batch builds on them."""
    prev = alias_version(client, name, CHAMPION)
    _set_champion(client, name, str(version), action, note, actor)
    cand = alias_version(client, name, CANDIDATE)
    if cand is None:
        return
    if action == "promote" and cand.version == str(version):
        client.delete_registered_model_alias(name, CANDIDATE)
    elif action == "rollback" and prev is not None and prev.version != str(version) \
            and descends(client, name, cand.version, prev.version) and not descends(client, name, version, prev.version):
        client.delete_registered_model_alias(name, CANDIDATE)


# ----------------------------------------------------------------------------- audit
def history(client: MlflowClient, name: str, version: str | None = None) -> list[dict]:
    """Every edit in the lineage of `version` (default: the champion), oldest first, with its
    status ON that version (holds / lost / superseded, from the version's ledger) and its
    final-model scores (measured when its batch was gated)."""
    from odedit.lifecycle.history import annotate, rows_from_run

    v = get_version(client, name, version) if version else alias_version(client, name, CHAMPION)
    if v is None:
        raise RegistryError(f"{name} has no champion; run `odedit registry init {name}`")
    rows = []
    for mv in reversed(lineage(client, name, v.version)):
        run_id = mv.tags.get(T + "run_id")
        if mv.tags.get(T + "kind") != "edit-batch" or not run_id:
            continue
        edits = run_json(client, run_id, "edits.json") or {}
        only = set(json.loads(mv.tags.get(T + "request_ids", "[]")))
        rows += rows_from_run(edits, {"version": mv.version, "created_at": mv.tags.get(T + "created_at")}, run_id, only)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = download_ledger(client, name, v.version, tmp)
    return annotate(rows, ledger, v.version)


def show(client: MlflowClient, request_id: str) -> list[dict]:
    """Everything recorded about one request id, newest batch first: the record, the
    request's audit fields, its gate report and the version it entered (if any)."""
    from odedit.lifecycle.history import annotate

    out = []
    statuses: dict[str, dict] = {}  # model name -> {request hash -> status on its champion}
    for run in runs_mentioning(client, request_id):
        edits = run_json(client, run.info.run_id, "edits.json") or {}
        rec = next((r for r in edits.get("records", []) if r["request_id"] == request_id), None)
        model = run.data.tags.get(T + "model_name")
        if model and model not in statuses:
            champ = alias_version(client, model, CHAMPION)
            statuses[model] = {}
            if champ is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    led = download_ledger(client, model, champ.version, tmp)
                statuses[model] = {e.request_hash: {"status": e.status, "version": e.version or champ.version,
                                                    "champion": champ.version, "scores": e.scores}
                                   for e in led.entries}
        on_champion = (statuses.get(model) or {}).get((rec or {}).get("request_hash"))
        out.append({"request_id": request_id, "run_id": run.info.run_id, "run_status": run.info.status,
                    "batch_status": run.data.tags.get(T + "status"),
                    "model_name": run.data.tags.get(T + "model_name"),
                    "version": run.data.tags.get(T + "version") or None,
                    "parent_version": run.data.tags.get(T + "parent_version"),
                    "started_at": datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc).isoformat(),
                    "request": (edits.get("requests") or {}).get(request_id), "record": rec,
                    "on_champion": on_champion,
                    "gate": run_json(client, run.info.run_id, "gate_report.json"),
                    "params": {k: v for k, v in run.data.params.items() if not k.startswith(("base.", "odedit."))}})
    return out
