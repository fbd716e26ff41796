# Two commands for a fresh machine (see README):  make demo   |   make test
# Each one creates or refreshes .venv and installs what it needs, Debian packages included.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 postgresql
DEMO_DIR ?= data/demo
DEMO_ARGS ?=
# The suite runs in parallel worker processes (pytest-xdist), each with its own Ray and Prefect.
# Many tests wait on a server, a Ray start or a retry back-off more than they compute, so twice
# as many workers as cores (at most 8) pays; each worker's torch gets cores / workers threads
# (tests/conftest.py). worksteal: each worker starts on a contiguous share of the tests (module
# fixtures built once) and takes half of the busiest worker's queue when its own runs out.
TEST_WORKERS ?= $(shell n=$$(( $$(nproc) * 2 )); echo $$(( n > 8 ? 8 : n )))

export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test lint deb venv clean

demo: $(STAMP)
	$(VENV)/bin/lawam demo $(DEMO_DIR) $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

venv: $(STAMP)

# Offscreen MuJoCo rendering needs Mesa's EGL, and the Prefect-on-PostgreSQL test (tests/test_serve.py)
# Debian's PostgreSQL server binaries (it starts its own throwaway cluster); installed only when missing.
deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt | deb
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is needed (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[sim,dev]'
	$(PY) -c 'import timm, torchvision, decord, av, zarr, icechunk, ray, prefect, metaworld'
	touch $(STAMP)

clean:
	rm -rf $(VENV) data/demo .pytest_cache
