#!/usr/bin/env bash
# GPU smoke check (tests/gpu/README.md): on a machine with one CUDA GPU, PyTorch, transformers and mpi4py, and no
# network, install this repo and the wheels in tests/gpu/wheels/, then run tests/gpu/smoke.py. Not part of CI.
#   bash tests/gpu/smoke.sh [OUT_DIR] [smoke.py options...]      # OUT_DIR default: $OUT, else /tmp/apr-ds-gpu-smoke
#   PYTHON=/path/to/python bash tests/gpu/smoke.sh                 # the Python that has PyTorch (default python3)
# Exit codes: 0 every stage passed, 1 a stage failed (OUT_DIR/summary.json says which), 2 no CUDA (nothing done),
# 3 the install failed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
out=${1:-${OUT:-/tmp/apr-ds-gpu-smoke}}
shift || true

# Before installing anything: a machine without a GPU stops here, with the reason.
"$python" "$here/smoke.py" --check-cuda || exit 2

# No network: pip must neither fetch build requirements (--no-build-isolation uses the installed setuptools) nor
# resolve dependencies (--no-deps); everything beyond PyTorch, transformers and mpi4py comes as files in wheels/.
pip_install=("$python" -m pip install --quiet --no-index --no-deps --no-build-isolation --disable-pip-version-check)
shopt -s nullglob
packages=("$here"/wheels/*.whl "$here"/wheels/*.tar.gz)
if ((${#packages[@]})); then
    echo "[smoke] installing ${#packages[@]} package(s) from $here/wheels"
    # DS_BUILD_OPS=0: DeepSpeed's sdist installs without compiling its ops (ZeRO-3 with torch AdamW needs none).
    if ! DS_BUILD_OPS=0 "${pip_install[@]}" "${packages[@]}"; then
        echo "[smoke] installing $here/wheels failed" >&2
        exit 3
    fi
fi
echo "[smoke] installing $repo (editable, no dependencies)"
"${pip_install[@]}" -e "$repo" || { echo "[smoke] pip install -e $repo failed" >&2; exit 3; }
if ! "$python" -c "import deepspeed" 2>/dev/null; then
    echo "[smoke] deepspeed is not importable: put its sdist and the wheels it needs in $here/wheels" \
         "(tests/gpu/fetch_wheels.sh, on a machine with network) and run again" >&2
    exit 3
fi

export PYTHONUNBUFFERED=1
exec "$python" "$here/smoke.py" --out "$out" "$@"
