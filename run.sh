#!/usr/bin/env bash
# Set up (once) and run streamer.  ./run.sh test  runs the test suite;  ./run.sh ARGS...  runs `streamer ARGS...`.
# The virtualenv is .venv (or $STREAMER_VENV). torch is installed first and pinned, because an unpinned
# request pulls a multi-GB CUDA build; set STREAMER_TORCH (e.g. "torch==2.13.0") to choose another.
set -euo pipefail
cd "$(dirname "$0")"
venv=${STREAMER_VENV:-.venv}
torch_req=${STREAMER_TORCH:-torch==2.13.0}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.streamer-installed-$( (cat pyproject.toml; echo "$torch_req") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "run.sh: installing into $venv (first run only)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$torch_req"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
  rm -f "$venv"/.streamer-installed-*
  touch "$stamp"
fi
if [ "${1:-}" = "test" ]; then
  shift
  exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/streamer" "$@"
