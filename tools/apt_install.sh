#!/usr/bin/env bash
# Install Debian packages for tests and tools, bounded in time: `tools/apt_install.sh PKG...`.
# Exit codes: 0 installed (or already there), 3 cannot install here (not root, no apt-get, mirror unreachable) —
# tests that need the packages skip on 3 —, anything else a real failure.
set -euo pipefail
(($#)) || { echo "usage: $0 PKG..." >&2; exit 2; }
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "apt_install: ${missing[*]} not installed, and installing needs root and apt-get" >&2
    exit 3
fi
echo "apt_install: installing ${missing[*]}" >&2
opts=(-q -o Acquire::Retries=1 -o Acquire::http::Timeout=20 -o Acquire::https::Timeout=20)
if ! timeout 300 apt-get "${opts[@]}" update >&2; then
    echo "apt_install: apt-get update failed (Debian mirror unreachable?)" >&2
    exit 3
fi
# policy-rc.d may refuse to start packaged services (containers); nothing here relies on them.
if ! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get "${opts[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
    echo "apt_install: apt-get install ${missing[*]} failed" >&2
    exit 3
fi
