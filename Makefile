PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test lint schedules

# torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[runtime,plot,dev]"

demo: install
	$(PYTHON) -m pipesynth.demo

test: install
	$(PYTHON) -m ruff check pipesynth runtime tests benchmarks
	$(PYTHON) -m pytest
