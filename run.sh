#!/usr/bin/env bash
# Set up (once) and run streamer.  ./run.sh test  runs the test suite;  ./run.sh ARGS...  runs `streamer ARGS...`.
# The virtualenv is .venv (or $STREAMER_VENV). torch is installed first and pinned, because an unpinned
# request pulls a multi-GB CUDA build; set STREAMER_TORCH (e.g. "torch==2.13.0") to choose another.
# NVIDIA: STREAMER_TORCH_INDEX=https://download.pytorch.org/whl/cu130 takes torch (and, with
# STREAMER_EXTRAS=tensorrt, torch-tensorrt) from that one CUDA index, so the two always match.
# STREAMER_EXTRAS (comma-separated, default "test") names the pyproject extras to install.
# Commands run in the caller's folder, so relative paths (./run.sh render ../photo.jpg out.png) mean what they say.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${STREAMER_VENV:-.venv}
case "$venv" in /*) ;; *) venv="$here/$venv" ;; esac  # a relative STREAMER_VENV is inside the project, as before
torch_req=${STREAMER_TORCH:-torch==2.13.0}
torch_index=${STREAMER_TORCH_INDEX:-}
extras=${STREAMER_EXTRAS:-test}
index_args=()
if [ -n "$torch_index" ]; then
  # the CUDA index first; PyPI for everything it does not hold (its torch has no +cuXXX label, so the
  # index's build of the same version wins)
  index_args=(--index-url "$torch_index" --extra-index-url https://pypi.org/simple)
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.streamer-installed-$( (cat "$here/pyproject.toml"; echo "$torch_req|$torch_index|$extras") |
  sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "run.sh: installing into $venv (first run only)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check ${index_args[@]+"${index_args[@]}"} "$torch_req"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check ${index_args[@]+"${index_args[@]}"} \
    -e "$here[$extras]"
  rm -f "$venv"/.streamer-installed-*
  touch "$stamp"
fi
if [ "${1:-}" = "test" ]; then
  shift
  exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/streamer" "$@"
