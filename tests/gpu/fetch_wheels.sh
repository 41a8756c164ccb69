#!/usr/bin/env bash
# Download, on a machine with network, what tests/gpu/smoke.sh installs offline on the GPU machine beyond PyTorch,
# CUDA, transformers and mpi4py: DeepSpeed (an sdist: PyPI has no wheel) and the packages it needs that a PyTorch
# image usually lacks. Everything lands in tests/gpu/wheels/ (git-ignored; a few MiB, under the 64 MiB a device
# run may carry).
#   bash tests/gpu/fetch_wheels.sh                          # for the GPU machine's Python 3.12 on x86-64 Linux
#   APR_WHEELS_PYTHON=3.11 bash tests/gpu/fetch_wheels.sh   # another Python there
# Versions are the ones the CPU venv runs (the combination the tests pass with); override one with e.g.
# APR_DEEPSPEED=deepspeed==0.18.0.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=$here/wheels
python=${PYTHON:-python3}
target_python=${APR_WHEELS_PYTHON:-3.12}
mkdir -p "$dest"

# DeepSpeed's own requirements that are not in a PyTorch image (einops, msgpack, ninja, numpy, packaging, psutil,
# py-cpuinfo and tqdm usually are; add any that the GPU machine lacks here).
pure=("${APR_HJSON:-hjson==3.1.0}" "${APR_PYDANTIC:-pydantic==2.14.4}" "${APR_ANNOTATED_TYPES:-annotated-types==0.8.0}"
      "${APR_TYPING_INSPECTION:-typing-inspection==0.4.5}")
compiled=("${APR_PYDANTIC_CORE:-pydantic-core==2.50.5}")  # must match pydantic's pin and the GPU machine's Python
sdists=("${APR_DEEPSPEED:-deepspeed==0.19.8}")

# Wheels for the GPU machine, not for this one: its Python version and platform, binaries only.
for_target=(--only-binary=:all: --python-version "$target_python" --implementation cp
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$python" -m pip download --quiet --no-deps "${for_target[@]}" -d "$dest" "${pure[@]}" "${compiled[@]}"
# An sdist is the same file for every platform; --no-build-isolation keeps pip from building it here (DeepSpeed's
# setup.py wants torch) just to read its metadata.
"$python" -m pip download --quiet --no-deps --no-binary=:all: --no-build-isolation -d "$dest" "${sdists[@]}"

echo "tests/gpu/wheels/ ($(du -sh "$dest" | cut -f1)):"
ls -1 "$dest"
