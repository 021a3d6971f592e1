#!/usr/bin/env bash
# scripts/make_venv.sh FOLDER [PY]: FOLDER becomes a virtual environment of a Python >= 3.12
# (scripts/find_python.sh chooses it, or PY); one that already is one is kept as it is.
set -uo pipefail
folder=$1
find=$(dirname "$0")/find_python.sh
"$find" "$folder/bin/python" >/dev/null 2>&1 && exit 0
python=$("$find" ${2:+"$2"}) || exit 1
rm -rf "$folder"
echo "Creating $folder with $python"
exec "$python" -m venv "$folder"
