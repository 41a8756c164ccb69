#!/usr/bin/env bash
# Build (or bring up to date) the SGLang test venv: real SGLang 0.5.23 on a CPU machine, for the conformance and
# RL-on-SGLang tests. Nothing CUDA is installed and nothing is downloaded at run time.
#   tools/sglang_venv.sh [VENV]        (default .venv-sglang; `make sglang` runs this)
# Every package comes pinned from constraints/sglang-cpu.txt with --no-deps; the CUDA-only imports SGLang needs
# on CPU come from our stand-ins in tools/sglang_cpu/, copied into the venv's site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-sglang}
python=${PYTHON:-python3}
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet --no-deps -r constraints/sglang-cpu.txt
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$site/sgl_kernel" "$site/triton"
cp -r tools/sglang_cpu/sgl_kernel tools/sglang_cpu/triton tools/sglang_cpu/apr_sglang_cpu.py "$site/"
echo "import apr_sglang_cpu" > "$site/apr_sglang_cpu.pth"
# The imports SGLang makes before it serves anything: fail here, with the import's own message, not in a test.
SGLANG_USE_CPU_ENGINE=1 "$venv/bin/python" -c "import sglang.srt.entrypoints.http_server, sglang.srt.mem_cache.allocation"
echo "SGLang test venv ready: $venv ($(du -sh "$venv" | cut -f1))"
