# Set-up is part of every target: `make demo` and `make test` create .venv when it is
# missing and return at once when it is up to date.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlkit-installed
# Pinned and installed first: a loose torch requirement pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
export WANDB_SILENT ?= true

.PHONY: demo test test-fast lint format venv clean-venv notebook-git

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
	@$(MAKE) --no-print-directory notebook-git
	@touch $(STAMP)

# `git diff` and `git merge` of notebooks cell by cell (.gitattributes names the drivers):
# nbdime defines the drivers in .git/config, then they are pointed at this venv's scripts so
# they work without activating it (a driver git cannot find makes `git diff` die). Nothing to
# do outside a git checkout, such as an unpacked source archive.
notebook-git:
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
		$(VENV)/bin/nbdime config-git --enable && \
		git config diff.jupyternotebook.command "$(abspath $(VENV))/bin/git-nbdiffdriver diff" && \
		git config merge.jupyternotebook.driver \
			"$(abspath $(VENV))/bin/git-nbmergedriver merge %O %A %B %L %P"; \
	fi

demo: $(STAMP)
	$(VENV)/bin/mlkit run templates/classify.ipynb --experiment demo
	$(VENV)/bin/mlkit sweep templates/classify.ipynb --space templates/classify_space.yaml \
		--study demo-sweep --trials 30 --jobs 2 --pruner median
	$(VENV)/bin/mlkit sweep report demo-sweep

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/nbstripout --verify --keep-id templates/*.ipynb

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/nbstripout --keep-id templates/*.ipynb

# The suite spends most of its time waiting on kernels, servers and the browser: it runs on
# TEST_WORKERS processes (pytest-xdist), each taking whole test files so a file's tests keep
# their order and its module fixtures are built once. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: lint
	$(VENV)/bin/pytest tests -n $(TEST_WORKERS) --dist loadfile --durations=25
	$(VENV)/bin/pytest --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg \
		-p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# The fast tier, for the edit-test loop: everything but the tests marked slow (real kernels
# running long, real training, sweeps, the browser, PostgreSQL). `make test` runs them all.
test-fast: $(STAMP)
	$(VENV)/bin/pytest tests -m "not slow"

clean-venv:
	rm -rf $(VENV)
