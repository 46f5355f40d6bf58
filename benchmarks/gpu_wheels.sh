#!/usr/bin/env bash
# Download (here, where a package registry is reachable) the wheels the GPU machine lacks into .whl/ (git-ignored),
# for CPython 3.12 on manylinux x86_64, so they travel with the working tree (benchmarks/gpu.md says how).
#
# The GPU machines (nvidia-h100-x1 and nvidia-h200 run the same image, see the device notes' KINDS.md) have
# python 3.12, torch 2.11 (cu130), transformers 5.17, accelerate 1.15, huggingface_hub 1.33, numpy, pandas, pyarrow,
# psutil, pyyaml, jinja2, tqdm,
# filelock, fsspec, xxhash, scipy, matplotlib, safetensors, tokenizers, pytest -- and no trl, datasets,
# bitsandbytes or deepspeed. What we carry, checked against each wheel's Requires-Dist:
#   trl 1.16.0          accelerate>=1.10.1, datasets>=4.7, huggingface_hub>=0.34, transformers>=4.56.2, pandas,
#                       pyarrow>=21, ... (all there but datasets). TRL 1.16 runs on transformers 5.17: it gates its
#                       newer features itself (e.g. `loss_is_scaled_for_ga` is emulated below 5.19), so no
#                       transformers wheel is carried; trl_extras needs transformers>=5.0 (pyproject).
#   datasets 5.2.0      dill<0.4.2, multiprocess<0.70.20, xxhash, pyarrow>=24, fsspec<=2026.9.0, hf_hub>=1.31
#   dill 0.4.1          (none)
#   multiprocess 0.70.19  dill>=0.4.1
#   bitsandbytes 0.50.2 torch>=2.4, numpy, packaging (the manylinux_2_24 wheel bundles the CUDA 13 kernels)
#   peft 0.21.2         the version tested here (the machine's own peft version is not recorded in KINDS.md)
# Not carried: evaluate (listed in pyproject but imported nowhere in trl_extras/), deepspeed (not needed on one GPU).
#
#   bash benchmarks/gpu_wheels.sh        # prints the total size of .whl/ and of the tracked tree
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl   # ignored by .gitignore (`.whl/`)

download() {  # NAME==VERSION [extra pip args]
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$@"
}

download trl==1.16.0
download datasets==5.2.0
download dill==0.4.1
download multiprocess==0.70.19
download bitsandbytes==0.50.2
download peft==0.21.2

# one version of each package: two wheels of the same name stop the whole install there
dups=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dups" ]; then echo "two versions of: $dups (remove the extra wheels from .whl/)" >&2; exit 1; fi

echo "wheels:"; ls -la .whl/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5/1048576, $9}'
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1)
total=$((wheels + tree + ${untracked:-0}))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "wheels $(mib "$wheels") MiB + tracked tree $(mib "$tree") MiB + untracked (not ignored) $(mib "${untracked:-0}") MiB" \
  "= $(mib "$total") MiB (limit 64 MiB)"
[ "$total" -le $((64 * 1048576)) ] || { echo "over the 64 MiB limit" >&2; exit 1; }
