#!/usr/bin/env bash
# The GPU check (README "GPU check"): on one GPU, in under 8 minutes, from a bare checkout --
#   build    libautotp and the CLI against the machine's python3 torch (CUDA), without GoogleTest
#   model    a TinyLlama-shaped Llama (~1.1B parameters) from a config, random weights (seed 0), bf16,
#            eager attention, traced on the CPU (scripts/gpu_check.py make-model)
#   data     synthetic tokens (scripts/tokenize_data.py --synthetic)
#   verify   `autotp verify --tp 2 --sdpa` fp32 on batch 1 x 128, on the GPU and on the CPU: each within
#            verify's own tolerance, and the two devices' losses within 1e-4 of each other
#   plan     `autotp plan` for that model at tp 1, seq 2048, micro-batch 1, bf16, flash attention
#   train    torchrun --nproc_per_node 1 autotp train --device cuda --sdpa, 30 steps of seq 2048, bf16
#   eager    the same model, batches and AdamW in a plain transformers + PyTorch loop on the same GPU
#   report   tokens/s (median after warm-up) of both and their ratio, MFU, max_memory_allocated
#            against the plan (scripts/gpu_check.py report)
# Every step is timed and limited so the whole run ends inside the budget (AUTOTP_GPU_BUDGET, 480 s);
# the report is written whatever failed. With $OUT set (the device tool), the log and the report go
# there too.
#
#   scripts/gpu_check.sh               on the GPU machine (device tool: README "GPU check")
#   scripts/gpu_check.sh --dry-run     here, on the CPU: a tiny model, seq 64, 3 steps, the existing
#                                      build/autotp (read only); --build builds into build_gpucheck/ instead
# Environment: PYTHON (python3; dry run .venv/bin/python), JOBS (nproc; dry run 1), AUTOTP_GPU_CARRY
# (build_gpucarry: scripts/gpu_carry.sh), AUTOTP_GPU_WORK, AUTOTP_GPU_BUILD, AUTOTP_TORCH_DIR (a
# LibTorch's share/cmake/Torch instead of PYTHON's torch), AUTOTP_GPU_CMAKE_ARGS (more -D...),
# AUTOTP_GPU_BUDGET (seconds, 480), AUTOTP_GPU_BUILD_LIMIT (seconds, 240).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0 BUILD_HERE=0 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --build) BUILD_HERE=1 ;;
    --only) ONLY=",$2,"; shift ;;
    *) echo "usage: scripts/gpu_check.sh [--dry-run [--build]] [--only step,step]" >&2; exit 2 ;;
  esac
  shift
done

CARRY=${AUTOTP_GPU_CARRY:-build_gpucarry}
if [ "$DRY" = 1 ]; then
  DEVICE=cpu SEQ=64 STEPS=3 WARMUP=1 VBATCH=2 VSEQ=16
  SHAPE=(--hidden 64 --intermediate 128 --layers 2 --heads 4 --kv-heads 2 --vocab 256)
  PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
  JOBS=${JOBS:-1}
  WORK=${AUTOTP_GPU_WORK:-/tmp/autotp_gpu_check_dry}
  BUILD=${AUTOTP_GPU_BUILD:-$ROOT/build_gpucheck}
else
  DEVICE=cuda SEQ=2048 STEPS=30 WARMUP=5 VBATCH=1 VSEQ=128
  SHAPE=(--hidden 2048 --intermediate 5632 --layers 22 --heads 32 --kv-heads 4 --vocab 32000)  # TinyLlama-1.1B's
  PYTHON=${PYTHON:-python3}
  JOBS=${JOBS:-$(nproc)}
  WORK=${AUTOTP_GPU_WORK:-/tmp/autotp_gpu_check}
  BUILD=${AUTOTP_GPU_BUILD:-/tmp/autotp_gpu_build}
fi
VOCAB=${SHAPE[-1]}
BUDGET=${AUTOTP_GPU_BUDGET:-480}
PEAK_FLOPS=989e12  # H200 SXM (= H100 SXM) dense bf16, NVIDIA's datasheet
LR=1e-4
AUTOTP=$BUILD/autotp
[ "$DRY" = 1 ] && [ "$BUILD_HERE" = 0 ] && AUTOTP=$ROOT/build/autotp

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
  TEE=$!
fi
rm -rf "$WORK"
mkdir -p "$WORK"
START=$(date +%s)
export PYTHONUNBUFFERED=1

# run_step NAME LIMIT_SECONDS FUNCTION: runs FUNCTION (a bash function of this script) under `timeout`
# within what is left of the budget; records NAME, exit status and seconds in WORK/steps.tsv.
run_step() {
  local name=$1 limit=$2 fn=$3
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then return 0; fi
  local left=$((START + BUDGET - $(date +%s)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "==== [$name] skipped: the ${BUDGET} s budget is spent"
    printf '%s\t%s\t%s\n' "$name" 124 0 >> "$WORK/steps.tsv"
    return 124
  fi
  echo "==== [$name] (at most ${limit} s)"
  local t0 rc ms
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" bash -c "$fn"
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s\t%s\t%d.%03d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$WORK/steps.tsv"
  echo "==== [$name] exit $rc after $((ms / 1000)) s (run so far $(( $(date +%s) - START )) s)"
  [ "$rc" = 124 ] && echo "==== [$name] stopped at its time limit"
  return "$rc"
}
SITE=/tmp/autotp_site
export ROOT SITE WORK BUILD AUTOTP PYTHON JOBS CARRY DEVICE SEQ STEPS VBATCH VSEQ VOCAB LR DRY
export SHAPE_ARGS="${SHAPE[*]}"

# ---- the steps ------------------------------------------------------------------------------------
setup() {
  # transformers 4.51.3 (the version whose Llama traces) and its pins, carried as wheels when the
  # machine's own are other versions (scripts/gpu_carry.sh); later steps put SITE first on PYTHONPATH.
  if ! "$PYTHON" -c "import transformers, sys; sys.exit(transformers.__version__ != '4.51.3')" 2>/dev/null; then
    ls "$ROOT/$CARRY"/wheels/*.whl >/dev/null 2>&1 || { echo "gpu_check: no transformers 4.51.3 and no $CARRY/wheels (make gpu-carry)"; return 1; }
    rm -rf "$SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
      "$ROOT/$CARRY"/wheels/*.whl || return 1
    touch "$WORK/use_site"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$PYTHON" - <<'EOF'
import platform, torch, transformers
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, compute capability {p.major}.{p.minor}")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv,noheader
  echo "CPUs: $(nproc); cmake $(cmake --version | head -1 | cut -d' ' -f3); ninja $(ninja --version 2>/dev/null || echo absent); nvcc $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
}

build() {
  set -e
  local torch_dir=${AUTOTP_TORCH_DIR:-}
  [ -n "$torch_dir" ] || torch_dir=$("$PYTHON" -c "import os, torch; print(os.path.join(torch.utils.cmake_prefix_path, 'Torch'))")
  local site
  site=$(cd "$torch_dir/../../../.." && pwd)
  local args=(-S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTorch_DIR="$torch_dir"
              -DAUTOTP_PYTHON="$(command -v "$PYTHON")" -DAUTOTP_TESTS=OFF -DAUTOTP_FIXTURES=OFF)
  command -v ninja >/dev/null && args+=(-G Ninja)
  args+=(${AUTOTP_GPU_CMAKE_ARGS:-})
  [ -f "$ROOT/$CARRY/include/nlohmann/json.hpp" ] && args+=(-DAUTOTP_EXTRA_INCLUDE="$ROOT/$CARRY/include")
  if [ -e "$site/torch/lib/libtorch_cuda.so" ]; then  # a CUDA LibTorch: the toolkit from nvcc (as scripts/cuda_build.sh)
    local nvcc=${CUDACXX:-$(command -v nvcc || true)}
    [ -n "$nvcc" ] || nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
    local top
    top=$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
    local cuda_root
    cuda_root=$(realpath "${top:-$(dirname "$nvcc")/..}")
    args+=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda_root" -DCUDAToolkit_ROOT="$cuda_root" -DCMAKE_CUDA_COMPILER="$cuda_root/bin/nvcc")
    if ! ls "$cuda_root"/lib64/libnvrtc.so "$cuda_root"/lib/libnvrtc.so >/dev/null 2>&1; then
      local nvrtc
      nvrtc=$(ls "$site"/nvidia/*/lib/libnvrtc.so.[0-9]* 2>/dev/null | grep -v builtins | head -1 || true)
      [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
    fi
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # autotp compiles no kernels; skips the detection
    echo "CUDA toolkit $cuda_root"
  fi
  cmake "${args[@]}" > "$WORK/cmake.log" 2>&1 || { tail -40 "$WORK/cmake.log"; return 1; }
  grep -E "autotp:|Found Torch" "$WORK/cmake.log" || true
  cmake --build "$BUILD" --target autotp_cli -j "$JOBS" > "$WORK/build.log" 2>&1 || { grep -B2 -A12 -m3 "error" "$WORK/build.log" | head -80; tail -5 "$WORK/build.log"; return 1; }
  tail -1 "$WORK/build.log"
}

model() { "$PYTHON" "$ROOT/scripts/gpu_check.py" make-model --work "$WORK" $SHAPE_ARGS; }

data() {
  "$PYTHON" "$ROOT/scripts/tokenize_data.py" --synthetic "$VOCAB" --tokens $(((STEPS + 2) * SEQ + 1)) --out "$WORK/train.tokens"
}

verify_device() {
  "$AUTOTP" verify "$WORK/model.pt" --tp 2 --device "$DEVICE" --sdpa --batch "$VBATCH" --seq "$VSEQ" | tee "$WORK/verify_device.txt"
}
verify_cpu() {
  "$AUTOTP" verify "$WORK/model.pt" --tp 2 --device cpu --sdpa --batch "$VBATCH" --seq "$VSEQ" | tee "$WORK/verify_cpu.txt"
}

plan() {
  "$AUTOTP" plan "$WORK/model.pt" --gpus-per-node 1 --gpu-memory 139GiB --intra-node-bw 450GB/s --seq "$SEQ" \
    --micro-batch 1 --global-batch 1 --dtype bf16 --flash-attention --json > "$WORK/plan.json" &&
    "$PYTHON" -c "import json,sys; p=json.load(open(sys.argv[1])); print(p['model']['parameters'], 'parameters;', [(s['name'], s['memory_bytes']['total']) for s in p['strategies']])" "$WORK/plan.json"
}

train() {
  cat > "$WORK/ds.json" <<EOF
{
  "train_micro_batch_size_per_gpu": 1,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": $LR, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0}},
  "bf16": {"enabled": true},
  "zero_optimization": {"stage": 1},
  "tensor_parallel": {"autotp_size": 1},
  "gradient_clipping": 1.0,
  "steps_per_print": 5,
  "seed": 0
}
EOF
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 --no-python "$AUTOTP" train --config "$WORK/ds.json" \
    --model "$WORK/model.pt" --data "$WORK/train.tokens" --steps "$STEPS" --seq "$SEQ" --device "$DEVICE" --sdpa \
    --no-shuffle --metrics "$WORK/metrics.jsonl"
}

eager() {
  "$PYTHON" "$ROOT/scripts/gpu_check.py" eager --work "$WORK" --steps "$STEPS" --seq "$SEQ" --device "$DEVICE" --lr "$LR"
}
export -f setup build model data verify_device verify_cpu plan train eager

echo "autotp GPU check$([ "$DRY" = 1 ] && echo ' (dry run, CPU)'): work $WORK, build $BUILD, budget ${BUDGET} s"
run_step setup 60 setup || exit 1
[ -f "$WORK/use_site" ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
if [ "$DRY" = 0 ] || [ "$BUILD_HERE" = 1 ]; then
  run_step build "${AUTOTP_GPU_BUILD_LIMIT:-240}" build || true
fi
if [ ! -x "$AUTOTP" ]; then
  echo "gpu_check: no $AUTOTP: nothing to check"
else
  run_step model 120 model && run_step data 30 data && {
    run_step verify-device 90 verify_device
    run_step verify-cpu 120 verify_cpu
    run_step plan 60 plan
    run_step train 180 train
    run_step eager 90 eager
  }
fi
echo "==== [report]"
"$PYTHON" "$ROOT/scripts/gpu_check.py" report --work "$WORK" --steps "$STEPS" --seq "$SEQ" --warmup "$WARMUP" \
  --peak-flops "$PEAK_FLOPS" --budget "$BUDGET" --verify-shape "batch $VBATCH x $VSEQ" $([ "$DRY" = 1 ] && echo --dry-run)
rc=$?
if [ -n "${OUT:-}" ]; then  # at most 8 files come back: these 5 and the log
  for f in report.txt report.json metrics.jsonl eager.json plan.json; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"; done
  exec >&- 2>&-
  wait "$TEE" 2>/dev/null  # the log complete before the tool collects it
fi
exit $rc
