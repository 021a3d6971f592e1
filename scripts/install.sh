#!/usr/bin/env bash
# One step from a bare machine to a virtual environment of Python >= 3.12 with the pinned
# packages, on an image whose own python3 is older (Cloud TPU VM runtimes, many GPU nodes):
#
#   bash scripts/install.sh tpu       # Cloud TPU VM: requirements.txt + requirements-tpu.txt
#   bash scripts/install.sh cuda12    # CUDA 12 GPU node (driver >= 525)
#   bash scripts/install.sh cuda13    # CUDA 13 GPU node (driver >= 580)
#   bash scripts/install.sh cpu       # requirements.txt alone
#   bash scripts/install.sh FILE...   # these requirement files
#
# It needs only the image's python3 (any 3.x with pip) and PyPI: it installs uv (astral-sh's
# Python and package manager, from PyPI) for this user, takes a Python >= 3.12 already on the
# machine (scripts/find_python.sh: python3.12, python3.13, python3, pyenv's) or has uv download
# one (a python-build-standalone build, under ~/.local/share/uv), makes $VENV (default .venv)
# from it and installs the requirements there (PY=/path/to/python names the Python to take,
# PY_VERSION=3.13 the one to download instead of 3.12). Then: source .venv/bin/activate.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
uv_version=0.13.10
case "${1:-}" in
  tpu) files=(requirements.txt requirements-tpu.txt) ;;
  cuda12) files=(requirements.txt requirements-cuda.txt) ;;
  cuda13) files=(requirements.txt requirements-cuda13.txt) ;;
  cpu) files=(requirements.txt) ;;
  '' | -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  *) files=("$@") ;;
esac
for file in "${files[@]}"; do
  [ -f "$file" ] || { echo "error: $file: no such requirements file" >&2; exit 2; }
done

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  base=$(python3 -m site --user-base 2>/dev/null) || {
    echo "error: python3 not found: install it (apt-get install python3 python3-pip)" >&2
    exit 1; }
  uv=$base/bin/uv
  if [ ! -x "$uv" ]; then
    echo "Installing uv $uv_version for $(id -un) (python3 -m pip install --user)"
    # Ubuntu 24.04 and Debian 12 mark their python3 as externally managed (PEP 668): a --user
    # install of one tool is what that flag allows; Ubuntu 22.04's pip predates the flag.
    python3 -m pip install -q --user "uv==$uv_version" 2>/dev/null ||
      python3 -m pip install -q --user --break-system-packages "uv==$uv_version" || {
        echo "error: could not install uv with python3 -m pip: install pip" \
             "(apt-get install python3-pip), or uv itself" >&2; exit 1; }
  fi
fi

# The machine's own certificate store, as pip uses it: uv's built-in roots do not know a
# site's TLS-inspecting proxy, and every download then fails.
export UV_SYSTEM_CERTS=${UV_SYSTEM_CERTS:-1}
if python=$(scripts/find_python.sh ${PY:+"$PY"} 2>/dev/null); then
  echo "Python: $python (found on this machine)"
else
  python=${PY_VERSION:-3.12}
  echo "Python: ${PY:-no Python >= 3.12} not found here; uv downloads CPython $python"
fi
"$uv" venv -q --allow-existing --python "$python" "$venv"
"$uv" pip install -q --python "$venv/bin/python" $(printf -- ' -r %s' "${files[@]}")
"$venv/bin/python" -c 'import sys; print(f"{sys.argv[1]}: Python {sys.version.split()[0]}")' \
  "$venv"
