# openbits — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RUN_DIR := .run
# The suite runs in this many pytest-xdist workers: most of a test's time is spent waiting on a
# daemon, a server or a subprocess, so two workers on two cores take about half the wall time
# (one process: `make test TEST_WORKERS=0`, i.e. no xdist). `--dist load` hands tests out in
# small batches: `loadfile` would keep only one of the API fuzzer's items, which share a node id.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist load)


.PHONY: run stop test venv test-deps lint typecheck unit integration chaos fuzz bench bench-1g bench-small bench-rss bench-throttle bench-events bench-upload bench-capped bench-latency bench-polite soak clean

# gssapi and krb5 (pyspnego's kerberos extra) compile against libkrb5-dev (with gcc and Python's
# headers): install them first.
# pip keeps the wheels it built in its cache, so a fresh venv on the same machine does not
# compile them again; the step is skipped altogether while pyproject.toml is unchanged.
$(VENV)/.installed: pyproject.toml
	@bash scripts/ensure-debian-packages.sh libkrb5-dev gcc
	@$(PYTHON) -c "import os, sysconfig; os.stat(sysconfig.get_paths()['include'] + '/Python.h')" 2>/dev/null \
		|| bash scripts/ensure-debian-packages.sh python3-dev
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PIP) install -q -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import openbits, aiohttp, click, rich, pytest, xdist, gssapi, krb5, spnego"
	touch $@

# An editable install has no bytecode until an import writes it, and none is written under
# PYTHONDONTWRITEBYTECODE: compile it here, as pip does for an installed copy, so that no
# command, daemon or test pays ~50 modules' compilation at each start (stale files are redone).
venv: $(VENV)/.installed
	@$(PY) -m compileall -q src/openbits > /dev/null

## make run: install into .venv, start the daemon on the embedded SQLite store and show a real transfer.
run: venv
	@bash scripts/demo.sh

stop:
	@if [ -f $(RUN_DIR)/daemon.pid ] && kill $$(cat $(RUN_DIR)/daemon.pid) 2>/dev/null; then \
		echo "openbits daemon stopped"; else echo "no daemon started by make run"; fi
	@rm -f $(RUN_DIR)/daemon.pid

## make test: install what the tests need (Debian's nginx when missing) and run the whole suite.
test: venv test-deps lint typecheck
	$(PY) -m pytest -q $(PYTEST_PARALLEL) tests

# The servers of the integration tests: nginx, tinyproxy, curl (the smoke tests' client), an MIT
# Kerberos KDC (krb5-kdc, kadmin.local from krb5-admin-server, kinit from krb5-user), Apache with
# mod_auth_gssapi and the NTLM mechanism (gss-ntlmssp), squid, and microsocks for SOCKS5.
test-deps:
	@bash scripts/ensure-debian-packages.sh nginx tinyproxy curl krb5-kdc krb5-admin-server krb5-user \
		apache2 libapache2-mod-auth-gssapi gss-ntlmssp squid microsocks passwd systemd

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q $(PYTEST_PARALLEL) tests/unit

integration: venv test-deps
	$(PY) -m pytest -q $(PYTEST_PARALLEL) tests/integration tests/cli

## make chaos: the crash torture (100 jobs of 0 B to 256 MiB, 40 SIGKILLs) and the network-fault
## torture (48 jobs, 240 faults) at length; make test runs a short round of each. Figures: bench/out/chaos.json.
chaos: venv test-deps
	OPENBITS_CHAOS_KILLS=$${OPENBITS_CHAOS_KILLS:-40} OPENBITS_CHAOS_JOBS=$${OPENBITS_CHAOS_JOBS:-100} \
	OPENBITS_CHAOS_MAX_MIB=$${OPENBITS_CHAOS_MAX_MIB:-256} OPENBITS_CHAOS_REPORT=$${OPENBITS_CHAOS_REPORT:-bench/out/chaos.json} \
	OPENBITS_FAULTS_JOBS=$${OPENBITS_FAULTS_JOBS:-48} OPENBITS_FAULTS_BUDGET=$${OPENBITS_FAULTS_BUDGET:-240} \
		$(PY) -m pytest -q -s tests/chaos

## make fuzz: the hypothesis fuzzers of tests/fuzz at length (make test runs 200 examples each).
fuzz: venv
	OPENBITS_FUZZ_PROFILE=long OPENBITS_FUZZ_EXAMPLES=$${OPENBITS_FUZZ_EXAMPLES:-20000} \
		$(PY) -m pytest -q --timeout=0 tests/fuzz

## make bench: every benchmark in bench/ (1 GiB, 2,000 x 16 KiB, 10,000 queued jobs, throttling, events,
## a 1 GiB upload, 512 MiB from a server capping each connection, API latency under load, and as
## root politeness across a tbf bottleneck).
bench: venv
	@bash scripts/ensure-debian-packages.sh nginx curl aria2 iproute2
	@rc=0; for b in bench_1g bench_small bench_rss bench_throttle bench_events bench_upload bench_capped bench_latency; do $(PY) bench/$$b.py || rc=1; done; \
	if [ "$$(id -u)" = 0 ]; then $(PY) bench/bench_polite.py || rc=1; \
	else echo "bench_polite skipped: it makes network namespaces (root): sudo make bench-polite"; fi; exit $$rc

## make bench-1g, bench-small, bench-rss, bench-throttle, bench-events, bench-upload, bench-capped,
## bench-latency: one of them.
bench-1g bench-small bench-rss bench-throttle bench-events bench-upload bench-capped bench-latency: venv
	@bash scripts/ensure-debian-packages.sh nginx curl aria2
	$(PY) bench/$(subst -,_,$@).py

## make soak: 10,000 jobs of small files through one daemon with 20 reading clients: RSS and fds
## stable, zero CPU while idle, read p99 under load (about 3-6 min; see bench/README.md).
## make bench-polite: issue 15 benchmark (d), curl beside an openbits NORMAL job and beside aria2c
## across a tbf bottleneck in network namespaces it creates and removes (root; exit 2 without ip/tc).
bench-polite: venv
	@bash scripts/ensure-debian-packages.sh nginx curl aria2 iproute2
	$(PY) bench/bench_polite.py

soak: venv
	@bash scripts/ensure-debian-packages.sh nginx
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) $(RUN_DIR) .pytest_cache .mypy_cache .ruff_cache
