# Entry points (README). Each target does all set-up first; all of them are idempotent.
#   make run    set up, build, SFT the bundled SmolLM2-135M-Instruct with tp=3 + ZeRO-1, export to HF
#   make test   set up, build, and run every test (but the heavy ones: make test-heavy)
#   make bench  set up, build, and run the benchmarks (not part of the tests)
#   make mutants  build deliberate faults one at a time and show which tests catch each
#   make cuda-build  compile everything against a CUDA LibTorch with NCCL (no GPU needed; not in make test)
#   make llamafactory-check  LLaMA-Factory + DeepSpeed AutoTP(2)+ZeRO-1 against autotp on one YAML (not in make test)
#   make gpu-check   the 8-minute GPU check (scripts/gpu_check.sh; make gpu-carry first, gpu-check-dry here)
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: setup build run test bench mutants clean

setup:
	@bash scripts/bootstrap.sh

build: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > $(BUILD).configure.log 2>&1 || (cat $(BUILD).configure.log; exit 1)
	@cmake --build $(BUILD) -j $(JOBS)

# The main job: supervised fine-tuning of SmolLM2-135M-Instruct with AutoTP over 3 ranks + ZeRO-1 on
# the bundled instruction data (data/sft_demo.json through its chat template; a quarter held out),
# with checkpoints and held-out loss, then the result back out as a Hugging Face folder that
# transformers loads and evaluates to the same held-out loss.
RUN_DIR = $(BUILD)/smollm2_sft
run: build
	$(BUILD)/autotp inspect $(BUILD)/fixtures/smollm2.pt --tp 3 | tail -4
	rm -rf $(RUN_DIR)
	.venv/bin/torchrun --standalone --nproc_per_node 3 --no-python $(BUILD)/autotp train \
	  --config configs/smollm2_sft_tp3.json --model $(BUILD)/fixtures/smollm2.pt \
	  --data $(BUILD)/data/sft_demo.tokens --eval-data $(BUILD)/data/sft_demo.eval.tokens --eval-every 5 \
	  --steps 20 --seq 64 --save-dir $(RUN_DIR)/checkpoints --save-every 10 --keep 1 \
	  --out $(RUN_DIR)/final --metrics $(RUN_DIR)/metrics.jsonl
	$(BUILD)/autotp merge $(RUN_DIR)/final --out $(RUN_DIR)/hf
	.venv/bin/python scripts/hf_eval.py $(RUN_DIR)/hf $(BUILD)/data/sft_demo.eval.tokens --seq 64 --metrics $(RUN_DIR)/metrics.jsonl

test: build
	cd $(BUILD) && ctest -j $(JOBS) -E '^Heavy\.' --output-on-failure

# Tests too slow for `make test` (SmolLM2 trained 20 steps at tp 2 and 4 against one process: ~6 min).
.PHONY: test-heavy
test-heavy: build
	cd $(BUILD) && ctest -R '^Heavy\.' --timeout 1800 --output-on-failure

bench: build
	@cmake --build $(BUILD) --target autotp_bench -j $(JOBS)
	$(BUILD)/autotp_bench --benchmark_report_aggregates_only=true
	BUILD=$(BUILD) .venv/bin/python benchmarks/bench_train.py
	BUILD=$(BUILD) .venv/bin/python benchmarks/bench_vs_deepspeed.py

# Each deliberate fault of tests/mutants/run.py must make a test fail (rebuilds; not part of `make test`).
mutants: build
	.venv/bin/python tests/mutants/run.py build-mutants

clean:
	rm -rf $(BUILD) $(BUILD).configure.log

# Compile libautotp, the CLI and the tests against the CUDA torch==2.14.1 wheel (own venv .venv-cuda)
# and this machine's nvcc, NCCL backend included, into build_cuda/ (scripts/cuda_build.sh). Runs
# nothing and needs no GPU; -j1 unless JOBS is given (make cuda-build JOBS=4). Not part of make test.
.PHONY: cuda-build
cuda-build:
	@bash scripts/cuda_build.sh

# The GPU check (README "GPU check"): gpu-carry gathers here what the GPU machine lacks (headers, wheels)
# into build_gpucarry/; gpu-check runs there (device tool: bash scripts/gpu_check.sh, carry build_gpucarry);
# gpu-check-dry runs the same script here on the CPU with a tiny model and build/autotp.
.PHONY: gpu-carry gpu-check gpu-check-dry
gpu-carry:
	@bash scripts/gpu_carry.sh
gpu-check:
	@bash scripts/gpu_check.sh
gpu-check-dry: build
	@bash scripts/gpu_check.sh --dry-run

# Can AutoTP + ZeRO-1 replace ZeRO-3? autotp against DeepSpeed (AutoTP, ZeRO-1/2/3), FSDP2 and DDP on
# one model, one token file, 4 processes (benchmarks/compare.py; not part of `make test`). Writes
# $(BUILD)/compare/compare.md, compare.json and charts. COMPARE_ARGS="--model smollm2 --steps 3" for SmolLM2.
.PHONY: compare
compare: build
	@.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install --quiet matplotlib
	DS_ACCELERATOR=$${DS_ACCELERATOR:-$$(.venv/bin/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")} \
	  .venv/bin/python benchmarks/compare.py --out $(BUILD)/compare --autotp $(BUILD)/autotp $(COMPARE_ARGS)

# One LLaMA-Factory YAML and its all-"auto" DeepSpeed JSON (configs/llamafactory/check_tp2.yaml,
# ds_check_tp2_auto.json) run in LLaMA-Factory 0.9.5 + DeepSpeed 0.19.8 AutoTP(2)+ZeRO-1 and in
# `autotp train --llamafactory`, 2 processes each on CPU, fp32; the per-step losses (10 steps) and the
# final weights must agree within 1e-4 relative (scripts/llamafactory_check.sh, llamafactory_compare.py).
# Installs LLaMA-Factory into its own venv .venv-lf (CPU torch 2.13.0 kept); not part of `make test`.
.PHONY: llamafactory-check
llamafactory-check: build
	@AUTOTP=$(BUILD)/autotp bash scripts/llamafactory_check.sh
