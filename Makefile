# `make demo` and `make test` are the two commands a newcomer runs (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo bench clean

install: $(STAMP)

# Idempotent: re-runs only when setup.py or constraints.txt change.
# torch is installed first from the pinned CPU build; sam2 is a source distribution whose
# build needs torch, so it builds without isolation (else pip fetches a second torch)
# and without its CUDA extension.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt torch numpy
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation -c constraints.txt sam2
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# The main job: adversarial attacker/defender training on the bundled model, then what it
# does as pictures: coarse versus refined prompts on held-out scenes of every domain
# (demo_out/demo/refine_summary.png and .html) and one-click segmentation overlays
# (README: time and memory). demo_out/ is replaced.
demo: install
	rm -rf demo_out
	$(VENV)/bin/ppd train --out demo_out/ppd
	$(VENV)/bin/ppd demo --defender demo_out/ppd --out demo_out/demo

# A small benchmark on the bundled model: every procedural domain, every protocol, with a
# report in bench_out/report.html (a few minutes on 2 CPU cores). Continues if interrupted.
bench: install
	$(VENV)/bin/ppd bench --quick --out bench_out

clean:
	rm -rf $(VENV) demo_out bench_out build *.egg-info
