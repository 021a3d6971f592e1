#!/usr/bin/env bash
# scripts/make_venv.sh FOLDER [PY]: FOLDER becomes a virtual environment of a Python >= 3.12
# (scripts/find_python.sh chooses it, or PY); one that already is one is kept as it is.
set -uo pipefail
folder=$1
"$folder/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null && exit 0
python=$("$(dirname "$0")/find_python.sh" ${2:+"$2"}) || exit 1
rm -rf "$folder"
echo "Creating $folder with $python"
exec "$python" -m venv "$folder"
