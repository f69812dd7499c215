#!/usr/bin/env bash
# `make cuda-build`: compile libautotp, the autotp CLI and autotp_tests against a CUDA LibTorch, on a
# machine with or without a GPU, so that the CUDA-only code (the NCCL mesh in runtime/mesh.cpp) is
# compiled and cannot rot unseen. Nothing is run and no fixtures are generated.
#   - its own venv (.venv-cuda; .venv is never touched) with the CUDA torch wheel pip finds on local
#     disk, pinned, and with it the nvidia-* wheels (nvidia-nccl-cu13 among them);
#   - nvcc from CUDACXX, PATH or CUDA_HOME; the toolkit is where that nvcc says it lives;
#   - configured and built into build_cuda/ with cmake + ninja, -j1 unless JOBS says otherwise.
# Idempotent: a second call only checks the venv, reconfigures and rebuilds what changed (ccache).
# Debian packages (GoogleTest, Benchmark, nlohmann/json, gloo headers, ccache) come from bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AUTOTP_CUDA_VENV:-.venv-cuda}
BUILD=${AUTOTP_CUDA_BUILD:-build_cuda}
JOBS=${JOBS:-1}
TORCH_PIN=${AUTOTP_CUDA_TORCH:-torch==2.14.1}
start=$(date +%s)

missing=()
for pkg in libgtest-dev libbenchmark-dev nlohmann-json3-dev libgloo-dev cmake ninja-build g++; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "cuda_build: missing Debian packages: ${missing[*]} (scripts/bootstrap.sh installs them)" >&2
  exit 1
fi

# ---- the CUDA LibTorch venv ----------------------------------------------------------------------
stamp="$VENV/.autotp-cuda-torch"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$TORCH_PIN" ]; then
  echo "cuda_build: installing $TORCH_PIN (CUDA wheel, from local disk) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$TORCH_PIN" 2>&1 | grep -v "is ignored: it is neither" || true
  echo "$TORCH_PIN" > "$stamp"
fi
# One line each: torch version, its CUDA version, its cmake prefix, its site-packages.
mapfile -t info < <("$VENV/bin/python" - 2>/dev/null <<'EOF'
import os, torch
print(torch.__version__); print(torch.version.cuda or "")
print(torch.utils.cmake_prefix_path); print(os.path.dirname(os.path.dirname(torch.__file__)))
EOF
)
if [ "${#info[@]}" -ne 4 ]; then
  rm -f "$stamp"; echo "cuda_build: cannot import torch from $VENV" >&2; exit 1
fi
torch_version=${info[0]} torch_cuda=${info[1]} torch_prefix=${info[2]} site=${info[3]}
if [ -z "$torch_cuda" ]; then
  echo "cuda_build: $VENV has torch $torch_version, a CPU build; pip found no CUDA wheel for $TORCH_PIN" >&2
  exit 1
fi

# ---- the CUDA toolkit, from nvcc -----------------------------------------------------------------
nvcc=${CUDACXX:-$(command -v nvcc || true)}
[ -n "$nvcc" ] || nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
if [ ! -x "$nvcc" ]; then
  echo "cuda_build: no nvcc (set CUDACXX or CUDA_HOME, or put nvcc on PATH)" >&2
  exit 1
fi
# nvcc may be a wrapper script; its dry run names the real toolkit (TOP=<toolkit>/bin/..).
top=$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
cuda_root=$(realpath "${top:-$(dirname "$nvcc")/..}")
nvcc_version=$("$cuda_root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
echo "cuda_build: torch $torch_version (CUDA $torch_cuda) from $VENV; nvcc $nvcc_version in $cuda_root"
if [ "${nvcc_version%%.*}" != "${torch_cuda%%.*}" ]; then
  echo "cuda_build: warning: nvcc is CUDA $nvcc_version but torch was built with CUDA $torch_cuda" >&2
fi

cmake_args=(-S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  -DCMAKE_PREFIX_PATH="$torch_prefix" -DTorch_DIR="$torch_prefix/Torch"
  -DCUDA_TOOLKIT_ROOT_DIR="$cuda_root" -DCUDAToolkit_ROOT="$cuda_root" -DCMAKE_CUDA_COMPILER="$cuda_root/bin/nvcc"
  -DAUTOTP_FIXTURES="${AUTOTP_CUDA_FIXTURES:-OFF}")
# A toolkit of only the compiler (as here) has no libnvrtc.so, which LibTorch's CMake links; pip's
# nvidia-cuda-nvrtc, installed with torch, has it (versioned only, so CMake cannot find it by name).
if ! ls "$cuda_root"/lib64/libnvrtc.so "$cuda_root"/lib/libnvrtc.so >/dev/null 2>&1; then
  nvrtc=$(ls "$site"/nvidia/*/lib/libnvrtc.so.[0-9]* 2>/dev/null | grep -v builtins | head -1 || true)
  [ -n "$nvrtc" ] && cmake_args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
[ -n "${AUTOTP_NCCL_ROOT:-}" ] && cmake_args+=(-DAUTOTP_NCCL_ROOT="$AUTOTP_NCCL_ROOT")

cmake "${cmake_args[@]}" > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
grep "autotp:" "$BUILD.configure.log" || true
cmake --build "$BUILD" -j "$JOBS"
echo "cuda_build: built $BUILD/libautotp.so, $BUILD/autotp, $BUILD/autotp_tests in $(( $(date +%s) - start )) s"
