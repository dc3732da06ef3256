"""Issue 12's first condition: the real window, started from a fresh interpreter on the default
demo setup, shows no error anywhere once its start-up work has settled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ERROR_MARKS = ("#b91c1c", "error", "cannot", "⚠", "traceback", "failed", "no estimate")


@pytest.mark.slow
def test_the_default_demo_window_starts_without_an_error(tmp_path, smollm2_dir):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1",
           "QLORA_STUDIO_SETTINGS": str(tmp_path / "fresh.ini"),  # a first start: the demo preset
           "XDG_DATA_HOME": str(tmp_path / "data")}  # the default runs folder, away from the user's
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("startup_probe.py"))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for bad in ("Traceback", "QThread: Destroyed", "Fatal Python error", "Timers cannot", "gemm_4bit_forward"):
        assert bad not in done.stderr, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    shown = [text for text in probe["labels"] if any(mark in text.lower() for mark in ERROR_MARKS)]
    assert shown == [], shown
    texts = " ".join(probe["labels"])
    assert "LlamaForCausalLM" in texts and "134.5M parameters" in texts  # the model line read the demo model
    assert "Predicted peak" in texts and "rows" in texts  # the estimate and the X-ray came back
    assert probe["start_enabled"], probe["start_tooltip"]
    assert probe["minimum"][0] <= 1024
