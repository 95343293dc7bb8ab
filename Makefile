# Hutong: all set-up happens here, so that `make demo` and `make test` work on a
# fresh Debian machine. Set-up steps are idempotent and skipped when done.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# intel-ipsec-mb (AES-GCM mover records) is packaged for amd64 only; elsewhere OpenSSL seals them.
IPSEC_MB_PACKAGE := $(shell [ "$$(dpkg --print-architecture 2>/dev/null)" = amd64 ] && echo libipsec-mb-dev)
APT_PACKAGES := build-essential python3-dev python3-venv pkg-config libxxhash-dev libssl-dev $(IPSEC_MB_PACKAGE) fuse3 libfuse3-dev restic borgbackup rclone rsync iperf3 iproute2 nftables procps git sqlite3 postgresql chromium zpaq redis-server strace time tcpdump
SOURCES := $(wildcard native/*.c native/*.h) setup.py pyproject.toml

.PHONY: all setup demo test test-all lint bench-quick clean install-check

all: test

.stamp-apt: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

# An editable install whose .pth puts the checkout on sys.path (setuptools' compat mode):
# the default mode's import finder cost every Python start-up, each hutong command
# included, ~15 ms, which no installed wheel pays. Where a setuptools lacks the mode,
# the default one.
.stamp-venv: $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat 2>/dev/null \
	  || $(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The C extension is rebuilt in place whenever a native source changes.
.stamp-native: .stamp-venv $(SOURCES)
	$(PY) setup.py -q build_ext --inplace
	$(PY) -m compileall -q gfs >/dev/null && $(PY) -m compileall -q -l bench >/dev/null
	@touch $@

setup: .stamp-apt .stamp-native

demo: setup
	$(PY) -m bench demo

lint: setup
	$(VENV)/bin/ruff check gfs bench tests dataflow privacy
	$(VENV)/bin/mypy

# Build the sdist and wheel, install them into a clean venv outside the checkout
# and run the CLI, an import of every module and a small end-to-end from there.
install-check: setup
	PYTHON=$(abspath $(PY)) .ci/install-check

test: setup lint
	$(PY) -m pytest -q -m "not slow"

test-all: setup lint
	HUTONG_HYPOTHESIS=explore $(PY) -m pytest -q

bench-quick: setup
	$(PY) -m bench chunker --quick
	$(PY) -m bench ingest --quick

clean:
	rm -rf build *.egg-info gfs/*.so .stamp-native

# Bounded fuzzing of the mover frame parser (atheris; 30 s).
fuzz-mover: setup
	$(PY) tests/test_mover_fuzz.py -max_total_time=30 -rss_limit_mb=2048 -max_len=4096
