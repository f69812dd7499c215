#!/usr/bin/env bash
# `make gpu-carry`: what scripts/gpu_check.sh needs on the GPU machine and cannot get there (it reaches
# no registry and has no Debian dev packages), gathered here into build_gpucarry/ (ignored by git, as
# build*/ is), for the device tool's `carry`:
#   include/nlohmann, include/gloo   Debian's nlohmann-json3-dev and libgloo-dev headers (ProcessGroupGloo.hpp
#                                    needs gloo's; the torch wheel ships gloo compiled, not its headers)
#   wheels/*.whl                     transformers 4.51.3 (the version whose Llama traces) and what its
#                                    import-time version check needs that the machine's image has too new:
#                                    huggingface_hub < 1.0, tokenizers 0.21.x, accelerate 1.6.0 (1.x newer
#                                    ones may need huggingface_hub 1.x), for its Python 3.12
# Idempotent. Then checks that the working tree plus the carry fit the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${AUTOTP_GPU_CARRY:-build_gpucarry}
WHEELS=(transformers==4.51.3 tokenizers==0.21.4 huggingface_hub==0.36.2 accelerate==1.6.0)

for h in /usr/include/nlohmann/json.hpp /usr/include/gloo/algorithm.h; do
  [ -f "$h" ] || { echo "gpu_carry: $h is missing (scripts/bootstrap.sh installs nlohmann-json3-dev and libgloo-dev)" >&2; exit 1; }
done
mkdir -p "$CARRY/include" "$CARRY/wheels"
rm -rf "$CARRY/include/nlohmann" "$CARRY/include/gloo"
cp -rL /usr/include/nlohmann /usr/include/gloo "$CARRY/include/"

have=1
for w in "${WHEELS[@]}"; do
  name=${w%%==*} version=${w##*==}
  ls "$CARRY/wheels/${name}-${version}-"*.whl >/dev/null 2>&1 || have=0
done
if [ "$have" = 0 ]; then
  rm -f "$CARRY"/wheels/*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" "${WHEELS[@]}"
fi

# The device tool sends tracked files, untracked files git does not ignore, and the carried paths: 64 MiB.
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry=$(du -sb "$CARRY" | cut -f1)
total=$((tree + carry))
echo "gpu_carry: $CARRY: $(ls "$CARRY/wheels" | wc -l) wheels, nlohmann + gloo headers; $((carry >> 20)) MiB carried +" \
     "$((tree >> 20)) MiB of working tree = $((total >> 20)) MiB of the device tool's 64"
if [ "$total" -gt $((64 << 20)) ]; then
  echo "gpu_carry: over 64 MiB: the largest untracked, unignored paths (ignore them in .git/info/exclude):" >&2
  git ls-files --others --exclude-standard --directory | head -20 | xargs -r du -sh >&2
  exit 1
fi
