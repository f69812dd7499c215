#!/usr/bin/env bash
# make llamafactory-check: configs/llamafactory/check_tp2.yaml and its DeepSpeed JSON (every value "auto")
# run unchanged in LLaMA-Factory + DeepSpeed AutoTP(2) + ZeRO-1 and in `autotp train --llamafactory`, two
# processes each (tp 2 x dp 1) on CPU, fp32, on the same model folder and data; then
# scripts/llamafactory_compare.py compares the per-step losses (1e-4 relative) and the final weights.
#
# LLaMA-Factory lives in its own venv (.venv-lf, made here once; a second call only checks it), never in
# the project's .venv: CPU torch 2.13.0 from local disk first and alone, then everything else under a
# constraints file that pins it, so pip can never swap it for a CUDA build:
#   - llamafactory 0.9.5 (0.9.3, whose templates autotp re-implements, refuses DeepSpeed above 0.16.9,
#     and DeepSpeed 0.16.9's AutoTP fails on CPU: broadcast_object_list(device="0")), transformers 5.6.0,
#     installed without its torch, torchvision, torchaudio, torchdata requirements;
#   - torchaudio 2.11.1 without dependencies (PyPI's newest; LLaMA-Factory imports it in data/mm_plugin.py
#     for audio inputs). Its compiled libraries are linked against CUDA torch 2.11 (libc10_cuda.so) and
#     cannot load next to the CPU torch; they are removed, and the pure-Python package imports;
#   - deepspeed 0.19.8 built from its sdist as bootstrap.sh does (no build isolation, no deps, no ops
#     prebuilt; DeepSpeed compiles its CPU Adam and shm ops on first use into $VENV/torch_extensions).
#
# Environment: AUTOTP (default build/autotp), LF_VENV (default .venv-lf). The YAML names its folders
# (model, output_dir) under build_lfc/llamafactory_check/, the work folder here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LF_VENV:-.venv-lf}
AUTOTP=${AUTOTP:-build/autotp}
YAML=configs/llamafactory/check_tp2.yaml
WORK=build_lfc/llamafactory_check
PY=.venv/bin/python  # the project venv: the tiny model, autotp's tracing and tokenizing, the comparison

LF_VERSION=0.9.5
PINS="torch==2.13.0
transformers==5.6.0
accelerate==1.11.0
datasets==4.0.0
peft==0.18.1
trl==0.24.0
tokenizers==0.22.2
deepspeed==0.19.8
hjson==3.1.0
py-cpuinfo==9.0.0
msgpack==1.2.4
einops==0.8.2
ninja==1.13.2"

# pip's notes on the torch* requirements left out on purpose (and on the local indexes' layout) are dropped.
quiet_pip() {
  "$VENV/bin/pip" "$@" --disable-pip-version-check -q 2>&1 |
    grep -v -e "is ignored: it is neither" -e "^ERROR: pip's dependency resolver does not currently" \
      -e "^llamafactory .* requires torch\(audio\|data\|vision\)" || true
}

[ -x "$AUTOTP" ] || { echo "llamafactory-check: $AUTOTP not built (make build, or AUTOTP=path/to/autotp)" >&2; exit 1; }
[ -x "$PY" ] || { echo "llamafactory-check: no $PY (make setup)" >&2; exit 1; }

stamp="$VENV/.llamafactory-check"
want="llamafactory==$LF_VERSION torchaudio==2.11.1 $(echo $PINS)"
if ! [ -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  t0=$SECONDS
  echo "llamafactory-check: installing LLaMA-Factory $LF_VERSION and DeepSpeed 0.19.8 into $VENV (CPU torch 2.13.0 kept)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  printf '%s\n' "$PINS" > "$VENV/constraints.txt"
  quiet_pip install "torch==2.13.0"
  quiet_pip install -c "$VENV/constraints.txt" --no-deps "llamafactory==$LF_VERSION"
  # LLaMA-Factory's own requirements, but torch (installed) and the torch* packages built for CUDA.
  "$VENV/bin/python" - > "$VENV/lf-requirements.txt" <<'EOF'
import importlib.metadata as md, re
for r in md.requires("llamafactory") or []:
    if "extra ==" in r:
        continue
    name = re.split(r"[ <>=!;\[]", r, maxsplit=1)[0].lower()
    if name not in ("torch", "torchaudio", "torchvision", "torchdata"):
        print(r)
EOF
  quiet_pip install -c "$VENV/constraints.txt" -r "$VENV/lf-requirements.txt"
  quiet_pip install -c "$VENV/constraints.txt" --no-deps "torchaudio==2.11.1"
  if ! "$VENV/bin/python" -c "import torchaudio" 2>/dev/null; then
    rm -f "$VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
  fi
  quiet_pip install -c "$VENV/constraints.txt" hjson py-cpuinfo msgpack einops ninja psutil
  DS_BUILD_OPS=0 quiet_pip install -c "$VENV/constraints.txt" --no-build-isolation --no-deps "deepspeed==0.19.8"
  if ! DS_ACCELERATOR=cpu "$VENV/bin/python" -c "
import torch, transformers, deepspeed, llamafactory, torchaudio
assert torch.__version__ == '2.13.0+cpu', torch.__version__
got = (transformers.__version__, deepspeed.__version__, llamafactory.__version__)
assert got == ('5.6.0', '0.19.8', '$LF_VERSION'), got
" > "$VENV/check.log" 2>&1; then
    cat "$VENV/check.log"
    echo "llamafactory-check: $VENV is not usable (above)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
  echo "llamafactory-check: $VENV ready ($((SECONDS - t0)) s)"
fi

mkdir -p "$WORK"
# One model folder both load: tests/data/make_tiny_hf.py's Llama (hidden 32, 2 layers, 4 heads / 2 kv
# heads, byte-level tokenizer with the chatml specials), deterministic.
[ -f "$WORK/tiny_hf/model.safetensors" ] || "$PY" tests/data/make_tiny_hf.py "$WORK/tiny_hf" 2>&1 | grep -v "Setting accelerator" || true

export TORCH_EXTENSIONS_DIR="$PWD/$VENV/torch_extensions"
rm -rf "$WORK/out" "$WORK/llamafactory" "$WORK/autotp" "$WORK/autotp_metrics.jsonl"
echo "llamafactory-check: LLaMA-Factory $LF_VERSION + DeepSpeed: llamafactory-cli train $YAML (2 processes; log $WORK/llamafactory.log)"
t0=$SECONDS
if ! env PATH="$PWD/$VENV/bin:$PATH" DS_ACCELERATOR=cpu FORCE_TORCHRUN=1 NPROC_PER_NODE=2 \
    timeout 3600 "$VENV/bin/llamafactory-cli" train "$YAML" > "$WORK/llamafactory.log" 2>&1; then
  tail -30 "$WORK/llamafactory.log"
  echo "llamafactory-check: LLaMA-Factory failed (log: $WORK/llamafactory.log)" >&2
  exit 1
fi
lf_s=$((SECONDS - t0))
mv "$WORK/out" "$WORK/llamafactory"
echo "llamafactory-check: LLaMA-Factory done in ${lf_s} s ($(grep -o "'train_runtime': '[0-9.]*'" "$WORK/llamafactory.log" | tail -1) of training)"

echo "llamafactory-check: autotp: torchrun --nproc_per_node 2 $AUTOTP train --llamafactory $YAML (log $WORK/autotp.log)"
t0=$SECONDS
if ! env AUTOTP_CACHE_DIR="$PWD/$WORK/cache" timeout 1800 .venv/bin/torchrun --standalone --nproc_per_node 2 --no-python \
    "$AUTOTP" train --llamafactory "$YAML" --metrics "$WORK/autotp_metrics.jsonl" > "$WORK/autotp.log" 2>&1; then
  tail -30 "$WORK/autotp.log"
  echo "llamafactory-check: autotp failed (log: $WORK/autotp.log)" >&2
  exit 1
fi
at_s=$((SECONDS - t0))
mv "$WORK/out" "$WORK/autotp"
echo "llamafactory-check: autotp done in ${at_s} s"

"$PY" scripts/llamafactory_compare.py --llamafactory "$WORK/llamafactory" --autotp "$WORK/autotp" \
  --metrics "$WORK/autotp_metrics.jsonl" --init "$WORK/tiny_hf" --markdown "$WORK/compare.md"
