# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet torch==2.13.0  # the [ml] extra: the CPU build on these machines' disk
	touch $(STAMP)

venv: $(STAMP)

# Simulate a Euclid-like field (4 exposures x 4 CCDs of 2048^2; headers off by up to 30" and 1 deg,
# without the optical distortion), run the pipeline (WCS re-fitted against the reference catalogue),
# print the score.
demo: $(STAMP)
	rm -rf demo_out
	$(BIN)/ssodetect simulate demo_out/sim --seed 7 --nccd 4 --size 2048 --pointing-error 30 --rotation-error 1
	$(BIN)/ssodetect run demo_out/sim --out demo_out/run --refcat demo_out/sim/refcat.ecsv --workers 2
	$(BIN)/ssodetect evaluate demo_out/run demo_out/sim/truth.ecsv

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_detection.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
