"""Start-up, settings that persist, the no-GPU banner, background tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gui_helpers import close_window
from PySide6.QtCore import QByteArray, QSettings

from qlora_studio.core.model.devices import GpuInfo
from qlora_studio.gui.settings import DEFAULTS, SETTINGS_ENV, Settings, default_output_dir
from qlora_studio.gui.workers.tasks import TaskRunner


def test_startup_smoke_in_a_subprocess(tmp_path, tiny_model):
    ini = tmp_path / "smoke.ini"
    s = Settings(QSettings(str(ini), QSettings.Format.IniFormat))
    s.set("setup/model", str(tiny_model))
    s.set("setup/output_dir", str(tmp_path / "runs"))
    s.sync()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QLORA_STUDIO_SMOKE_QUIT_MS": "300", SETTINGS_ENV: str(ini),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "qlora_studio.gui.launcher"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "window shown" in done.stdout
    for bad in ("Traceback", "QThread: Destroyed", "Fatal Python error", "Timers cannot"):
        assert bad not in done.stderr, done.stderr[-3000:]
    # the window wrote its state on the way out
    assert QSettings(str(ini), QSettings.Format.IniFormat).value("window/geometry") is not None


def test_settings_round_trip_with_typed_defaults(tmp_path):
    path = str(tmp_path / "s.ini")
    s = Settings(QSettings(path, QSettings.Format.IniFormat))
    assert s.get("monitor/log_scale") is False and s.get("monitor/smoothing") == 0.6
    assert s.output_dir() == default_output_dir() and default_output_dir().endswith("runs")
    s.set("monitor/log_scale", True)
    s.set("monitor/smoothing", 0.85)
    s.set("monitor/extend_steps", 250)
    s.set("setup/output_dir", str(tmp_path / "mine"))
    s.set("window/geometry", QByteArray(b"\x01\x02geometry"))
    s.sync()
    again = Settings(QSettings(path, QSettings.Format.IniFormat))
    assert again.get("monitor/log_scale") is True and again.get("monitor/smoothing") == 0.85
    assert again.get("monitor/extend_steps") == 250 and isinstance(again.get("monitor/extend_steps"), int)
    assert again.output_dir() == str(tmp_path / "mine")
    assert bytes(again.get("window/geometry")) == b"\x01\x02geometry"
    with pytest.raises(KeyError):
        s.set("no/such/key", 1)
    assert set(DEFAULTS) >= {"setup/model", "setup/data", "setup/output_dir", "window/geometry"}


def test_the_window_remembers_model_data_folder_and_geometry(qtbot, settings, tmp_path, tiny_model):
    from qlora_studio.gui.main_window import MainWindow

    data = tmp_path / "mine.jsonl"
    data.write_text('{"text": "hello"}\n')
    first = MainWindow(settings)
    first.show()
    first.resize(1000, 700)
    first.setup.widget("data.path").setText(str(data))
    first.setup.widget("output_dir").setText(str(tmp_path / "elsewhere"))
    first.monitor.log_scale.setChecked(True)
    first.tabs.setCurrentIndex(2)
    close_window(qtbot, first)

    store = Settings(QSettings(settings.store.fileName(), QSettings.Format.IniFormat))
    second = MainWindow(store)
    second.show()
    try:
        c = second.setup.config
        assert c.model.name_or_path == str(tiny_model) and c.data.path == str(data)
        assert c.output_dir == str(tmp_path / "elsewhere") and second.runs.output_dir == c.output_dir
        # not the first-start 1400x900 (the offscreen screen is 800 px wide, so only the height survives as is)
        assert second.height() == 700 and second.width() < 1400
        assert second.monitor.log_scale.isChecked() and second.tabs.currentIndex() == 2
    finally:
        close_window(qtbot, second)


def test_no_gpu_shows_a_banner_and_training_stays_on(window, qtbot):
    if window.gpus is None:
        with qtbot.waitSignal(window.gpus_detected, timeout=60_000):
            pass
    assert window.gpus == []  # this machine has none
    assert window.banner.isVisibleTo(window) and "No NVIDIA GPU" in window.banner.text()
    assert window.start_action.isEnabled()
    assert window.setup.memory.budget_combo.currentData() == 16.0  # a card size to plan for


def test_a_detected_gpu_sets_the_budget_and_the_card_line(qtbot, settings, monkeypatch):
    from qlora_studio.gui.main_window import MainWindow

    fake = GpuInfo(0, "NVIDIA H100 80GB HBM3", int(79.6 * 2**30), 2**30)
    monkeypatch.setattr("qlora_studio.core.model.devices.list_gpus", lambda: [fake])
    w = MainWindow(settings)
    w.show()
    try:
        with qtbot.waitSignal(w.gpus_detected, timeout=60_000):
            pass
        assert not w.banner.isVisibleTo(w)
        memory = w.setup.memory
        assert memory.budget_combo.currentData() == "auto" and memory.budget_gb == pytest.approx(79.6)
        assert "H100" in memory.budget_combo.currentText()
        assert w.monitor.vram_chart.capacity_gb == pytest.approx(79.6)
    finally:
        close_window(qtbot, w)


def test_task_runner_keeps_the_newest_request_and_reports_errors_as_data(qtbot):
    release = threading.Event()
    calls = []

    def work(x):
        calls.append((x, threading.current_thread() is threading.main_thread()))
        if x == "first":
            release.wait(10)
        if x == "bad":
            raise ValueError("bad input")
        return x.upper()

    runner = TaskRunner(work)
    results, errors = [], []
    runner.result.connect(lambda tag, value: results.append((tag, value)))
    runner.error.connect(lambda tag, info: errors.append((tag, info)))
    runner.request("first", tag=1)
    runner.request("second", tag=2)  # waits...
    runner.request("third", tag=3)  # ...and is replaced
    with qtbot.waitSignal(runner.busy_changed, timeout=10_000, check_params_cb=lambda busy: not busy):
        release.set()
    assert [c[0] for c in calls] == ["first", "third"] and not any(on_main for _, on_main in calls)
    assert results == [(3, "THIRD")]  # the stale first result is dropped
    with qtbot.waitSignal(runner.error, timeout=10_000):
        runner.request("bad", tag=4)
    tag, info = errors[0]
    assert tag == 4 and info.reason == "ValueError: bad input" and "Traceback" in info.details
    assert not info.cause.is_users_to_fix
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    runner.shutdown()
    assert runner.wait(0)


def test_window_tasks_starting_at_once_all_import_transformers(tmp_path):
    """Issue 12: on every start the model line or the X-ray showed "cannot import name 'AutoConfig'
    from 'transformers'": worker threads raced on transformers' first import. A fresh interpreter
    starts four tasks at once; each must get its name (and the import stays quiet)."""
    script = Path(__file__).with_name("concurrent_imports.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.count(": ok") == 4, done.stdout
    assert "gemm_4bit_forward" not in done.stderr, done.stderr[-2000:]
