# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench model clean

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
	$(BIN)/ssodetect run demo_out/sim --out demo_out/run --refcat demo_out/sim/refcat.ecsv --workers 2 || [ $$? -eq 1 ]  # 1: done, with warnings
	$(BIN)/ssodetect evaluate demo_out/run demo_out/sim/truth.ecsv || [ $$? -eq 1 ]  # 1: scored, with warnings

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_detection.py

# Reproduce the shipped CNN (src/ssodetect/ml/models/euclid4_track32.pt) from simulated data (~30 min on 2 cores).
MODEL_WORK ?= model_work
model: $(STAMP)
	for s in 101 102 103 104; do \
	  $(BIN)/ssodetect simulate $(MODEL_WORK)/sim$$s --seed $$s --size 2048 -q && \
	  $(BIN)/ssodetect ml dataset $(MODEL_WORK)/sim$$s --out $(MODEL_WORK)/ds$$s -n 8000 --seed $$s -q || exit 1; \
	done
	$(BIN)/ssodetect ml train $(MODEL_WORK)/ds101 $(MODEL_WORK)/ds102 $(MODEL_WORK)/ds103 $(MODEL_WORK)/ds104 \
	  --out $(MODEL_WORK)/model --epochs 10 --seed 0
	cp $(MODEL_WORK)/model/model.pt src/ssodetect/ml/models/euclid4_track32.pt

clean:
	rm -rf $(VENV) demo_out .pytest_cache
