# The two commands of README: `make demo` (install + main job) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/state

# Offline, no telemetry (see ../shared/stack-notes.md).
export DO_NOT_TRACK=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
export ODEDIT_STATE_DIR=$(STATE)

.PHONY: install demo test bench clean

$(BIN)/odedit: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/odedit

install: $(BIN)/odedit

demo: install
	$(BIN)/odedit demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/odedit bench --quick

clean:
	rm -rf $(STATE) out
