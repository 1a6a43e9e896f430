# Two commands on a fresh Debian/Ubuntu machine:  make sim  |  make test
# Both create .venv, install the system packages that are missing (mosquitto, libzbar0,
# postgresql: the test session initdbs a throwaway cluster when none runs on 5432; dosfstools
# and fusefat: a FAT data directory in the tests) and the Python dependencies, then run.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=
PYTEST_ARGS ?=
# make test runs the suite in this many pytest-xdist workers, each file's tests in one of them
# (a module's fixtures, e.g. the console test's plaza, are made once); each worker has its own
# session mosquitto and PostgreSQL databases. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2

.PHONY: setup system-deps browser-deps rtsp-deps systemd-deps sim test lint bench clean

system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	ldconfig -p 2>/dev/null | grep -q 'libzbar.so.0' || missing="$$missing libzbar0"; \
	command -v mount >/dev/null 2>&1 || missing="$$missing mount"; \
	command -v mkfs.vfat >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.vfat ] || missing="$$missing dosfstools"; \
	command -v fusefat >/dev/null 2>&1 || missing="$$missing fusefat"; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	$(PY) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The dashboard's browser test drives Debian's Chromium with Playwright (no browser download).
browser-deps:
	@[ -x /usr/bin/chromium ] || { echo "installing system packages: chromium"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# The camera tests stream from Debian's GStreamer RTSP server, run by the system python3 (its
# GObject bindings are Debian's): tests/scanner/gst_rtsp_camera.py.
RTSP_PACKAGES := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
rtsp-deps:
	@/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); \
	  from gi.repository import GstRtspServer' 2>/dev/null || { \
	  echo "installing system packages: $(RTSP_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(RTSP_PACKAGES); }

# The service tests run deploy/lane.service under Debian's systemd, booted as PID 1 of
# namespaces of their own (as root; skipped elsewhere): tests/systemd_kit.py.
systemd-deps:
	@{ [ -x /lib/systemd/systemd ] && command -v systemd-run >/dev/null 2>&1; } || { \
	  echo "installing system packages: systemd"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends systemd; }

$(STAMP): pyproject.toml
	$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ needed")'
	[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: system-deps $(STAMP)

sim: setup
	$(BIN)/lane sim $(ARGS)

test: setup browser-deps rtsp-deps systemd-deps
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

LINTED := lane scanner barrier uplink sim tests bench
# mypy --strict over bench/ too, file by file as each is made clean (the others still have
# errors: RecordDraft's fields given as plain strings, paho's dynamic Properties, patched methods).
TYPED_BENCH := bench/uplink_ingest.py
lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy lane scanner barrier uplink sim $(TYPED_BENCH)

# make test runs every script in bench/ small too: tests/test_bench_smoke.py.
bench: setup
	$(BIN)/python -m bench.scan
	$(BIN)/python -m bench.first_look
	$(BIN)/python -m bench.auth
	$(BIN)/python -m bench.barrier
	$(BIN)/python -m bench.handoff
	$(BIN)/python -m bench.plaza
	$(BIN)/python -m bench.uplink
	$(BIN)/python -m bench.camera
	$(BIN)/python -m bench.sim
	$(BIN)/python -m bench.reconcile
	$(BIN)/python -m bench.networks
	$(BIN)/python -m bench.console
	$(BIN)/python -m bench.road

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
