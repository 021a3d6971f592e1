#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 for the project's environment (JAX 0.11 and later need it),
# or says in one line what to install and exits 1.
#   scripts/find_python.sh            python3.12, python3.13, python3, then pyenv's installed ones
#   scripts/find_python.sh PATH       that Python only (make PY=...)
# A pyenv shim whose version is not selected fails to run; it is skipped, and the version it
# stands for is then found under pyenv's own folder.
set -uo pipefail
check='import sys; sys.exit(0 if sys.version_info[:2] >= (3, 12) else 1)'  # the one minimum

usable() {  # prints the interpreter's own path when it runs and is new enough
  "$1" -c "$check" >/dev/null 2>&1 && "$1" -c 'import sys; print(sys.executable)' 2>/dev/null
}

if [ -n "${1:-}" ]; then
  usable "$1" && exit 0
  echo "PY=$1 is not a Python >= 3.12 that runs here: name another," \
       "or leave PY unset to find one." >&2
  exit 1
fi
for candidate in python3.12 python3.13 python3; do
  command -v "$candidate" >/dev/null 2>&1 && usable "$candidate" && exit 0
done
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for candidate in "$pyenv_root"/versions/3.12*/bin/python3 "$pyenv_root"/versions/3.1[3-9]*/bin/python3; do
  [ -x "$candidate" ] && usable "$candidate" && exit 0
done
echo "No Python >= 3.12 found (tried python3.12, python3.13, python3 and" \
     "$pyenv_root/versions): install one (pyenv install 3.12, or your system's python3.12 with" \
     "its venv module), or name it with make PY=/path/to/python3.12." >&2
exit 1
