#!/usr/bin/env bash
# One-command set-up: ffmpeg (apt), .venv in the repo root, torch first, then
# this project editable with its test extras, every dependency at the exact
# version of requirements.lock (what CI tested) and torch held to the one installed. Idempotent: a second run checks a
# stamp and returns in seconds.
#
#   PYRATOK_PYTHON       interpreter for the venv (default: python3.11, else python3)
#   PYRATOK_TORCH        torch requirement to install first (default: torch==2.13.0)
#   PYRATOK_TORCH_INDEX  extra index for torch (e.g. https://download.pytorch.org/whl/cpu)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
TORCH_REQ=${PYRATOK_TORCH:-torch==2.13.0}

say() { printf '[setup] %s\n' "$*"; }

# 1. ffmpeg/ffprobe from the system package manager (ingest probes and cuts with them).
if ! command -v ffprobe >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then
  say "installing ffmpeg (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

# 2. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  PY=${PYRATOK_PYTHON:-$(command -v python3.11 || command -v python3)}
  "$PY" -c 'import sys; assert sys.version_info >= (3, 10), "pyratok needs Python >= 3.10, got " + sys.version' 
  say "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# 3. Skip the installs when nothing that decides them changed since the last run.
stamp_of() { cat pyproject.toml setup.py requirements.lock scripts/setup.sh | sha256sum | cut -c1-16; echo "$TORCH_REQ"; }
STAMP_FILE=$VENV/.pyratok-setup-stamp
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$(stamp_of)" ] \
   && "$VENV/bin/python" -c 'import pyratok, torch' >/dev/null 2>&1; then
  say "up to date ($VENV)"
  exit 0
fi

# 4. torch first, alone, so the pinned build is the one every later install sees.
TORCH_ARGS=()
[ -n "${PYRATOK_TORCH_INDEX:-}" ] && TORCH_ARGS+=(--extra-index-url "$PYRATOK_TORCH_INDEX")
say "installing $TORCH_REQ"
"${PIP[@]}" install -q "${TORCH_ARGS[@]}" "$TORCH_REQ"

# 5. Everything else at the locked versions, with torch held to the installed one.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
grep -v '^torch==' requirements.lock > "$CONSTRAINTS"
echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')" >> "$CONSTRAINTS"
say "installing pyratok (editable) with its test extras, pinned by requirements.lock"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e ".[test]"

# 6. Guard rails: one torch, no torchvision (CUDA-only wheels break imports on CPU).
"$VENV/bin/python" - <<'PY'
import importlib.util, sys, torch
if importlib.util.find_spec("torchvision") is not None:
    sys.exit("torchvision is installed in .venv; it breaks transformers' video processors on CPU. pip uninstall torchvision")
print(f"[setup] torch {torch.__version__}, python {sys.version.split()[0]}")
PY
stamp_of > "$STAMP_FILE"
say "done: $VENV/bin/pyratok --help"
