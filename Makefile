PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Only the folders this checkout has (benchmarks/ arrives with the benchmarks).
LINTED := $(wildcard pipesynth runtime tests benchmarks)

.PHONY: install demo test lint schedules

# torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[runtime,plot,dev]"

demo: install
	$(PYTHON) -m pipesynth demo

test: install lint
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check $(LINTED)

# The checked-in schedule files for 4 devices and 8 microbatches, equal costs.
schedules:
	for name in gpipe 1f1b zb-h1 zb-h2; do \
		$(PYTHON) -m pipesynth schedule $$name -d 4 -m 8 -o schedules/$$name-d4-m8.json || exit 1; \
	done
	$(PYTHON) -m pipesynth schedule interleaved-1f1b -d 4 -m 8 -v 2 -o schedules/interleaved-1f1b-d4-m8.json
	# Solved V-shape files and their index schedules/README.md (pipesynth solve, deterministic, byte-identical
	# on a rerun; about 2.5 minutes on 2 cores; seconds per file in schedules/solved.log).
	PYTHONPATH=. $(PYTHON) schedules/solved.py
