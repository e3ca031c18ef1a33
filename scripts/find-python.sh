#!/usr/bin/env bash
# Print the path of the first Python >= 3.11 with venv support (python3.11 first: CI's).
# `make` uses it to create .venv; set PYTHON=/path/to/python to choose one yourself.
set -euo pipefail

for candidate in ${PYTHON:-} python3.11 python3 python3.12 python3.13 python3.14; do
  path="$(command -v "$candidate" 2>/dev/null)" || continue
  if "$path" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
  then
    echo "$path"
    exit 0
  fi
done
echo "No Python 3.11 or newer with venv support found (tried ${PYTHON:-} python3.11 python3" \
     "python3.12 python3.13 python3.14). On Debian or Ubuntu: apt-get install python3 python3-venv" >&2
exit 1
