# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := checkpoints/demo
DEMO_IMAGES ?= 32
DEMO_EPOCHS ?= 8

.PHONY: install install-test demo test lint clean-demo

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# stardist is installed only for the real nuclei image inside its wheel (read as a file, never imported);
# --no-deps keeps its heavy dependencies (TensorFlow, ...) out.
$(VENV)/.test-installed: $(VENV)/.runtime-installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps stardist==0.9.2
	touch $@

install: $(VENV)/.runtime-installed

install-test: $(VENV)/.test-installed

# Synthetic Carvana-format data if data/ has none, a short training run, evaluation, one prediction.
demo: install
	@if [ -z "$$(ls -A data/imgs 2>/dev/null)" ]; then \
		$(PY) -m utils.synthetic_data --out data --count $(DEMO_IMAGES) --width 480 --height 320; fi
	$(PY) train.py --epochs $(DEMO_EPOCHS) --batch-size 2 --scale 0.25 --learning-rate 5e-4 --amp --overwrite \
		--validation 20 --checkpoint-dir $(DEMO_DIR) --wandb offline
	$(PY) evaluate.py -m $(DEMO_DIR)/best.pth --output $(DEMO_DIR)/evaluation.csv
	$(PY) predict.py -m $(DEMO_DIR)/best.pth -i "$$(ls data/imgs/* | head -n 1)" -o $(DEMO_DIR)/predictions/ --overlay --overwrite
	@echo "demo done: see $(DEMO_DIR)/ (training_curves.png, metrics.csv, evaluation.csv, predictions/)"

# --no-loadscope-reorder: xdist would otherwise hand out the files with the most tests first, and the one-test
# nuclei file (over a minute) last, to a single busy worker (tests/conftest.py orders the slow files first).
test: install-test
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

lint: install-test
	$(VENV)/bin/ruff check .

clean-demo:
	rm -rf $(DEMO_DIR)
