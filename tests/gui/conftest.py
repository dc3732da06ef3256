"""GUI fixtures: a window on a throwaway QSettings file, opened on the tiny model, and finished
run folders to replay. Qt warnings fail these tests (pytest-qt's qt_log_level_fail)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gui_helpers import close_window


# Qt messages that are facts of the offscreen platform, not of our code.
QT_LOG_IGNORE = (
    r"This plugin does not support propagateSizeHints\(\)",
    r"This plugin does not support raise\(\)",
    r"QFont::setPointSize: Point size <= 0",
)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.qt_log_level_fail("WARNING"))
            item.add_marker(pytest.mark.qt_log_ignore(*QT_LOG_IGNORE))


@pytest.fixture(scope="session", autouse=True)
def _studio_app(qapp):
    """The app as `main()` sets it up: style, chart defaults, garbage collection on the GUI thread."""
    from qlora_studio.gui.app import apply_style
    from qlora_studio.gui.widgets.charts import configure_pyqtgraph
    from qlora_studio.gui.gc_guard import GuiThreadGarbageCollector

    apply_style(qapp)
    configure_pyqtgraph()
    collector = GuiThreadGarbageCollector()
    yield
    collector.stop()


TEST_NAME = "PYTEST_CURRENT_TEST"


def _same_environment(spare_env: dict, env: dict) -> bool:
    return {k: v for k, v in spare_env.items() if k != TEST_NAME} == {k: v for k, v in env.items() if k != TEST_NAME}


@pytest.fixture(scope="session", autouse=True)
def _spare_workers():
    """A window run trains in a spare worker (supervisor.Spare) started ahead with the libraries
    imported, when its environment is the run's. pytest names the running test in
    PYTEST_CURRENT_TEST, so no run ever matched the spare the previous run left: every run started
    cold and every spare imported torch for nothing. Compare the environments without that one
    variable, as the app sees them outside pytest; any other difference still starts the run cold
    (the cold start has its own tests: test_spare_worker.py, the pickled model, several processes).
    One spare is started with the session, as the window starts one after its first seconds."""
    from qlora_studio.core.training.supervisor import Spare

    take = Spare.take.__func__

    def take_ignoring_the_test_name(cls, env):
        waiting = cls._waiting
        if waiting is not None and _same_environment(waiting[1], env):
            env = waiting[1]
        return take(cls, env)

    patch = pytest.MonkeyPatch()
    patch.setattr(Spare, "take", classmethod(take_ignoring_the_test_name))
    Spare.prepare()
    yield Spare
    patch.undo()


@pytest.fixture(autouse=True)
def _a_spare_for_the_next_run(_spare_workers):
    """After a test that changed the environment while its run's spare was started (a monkeypatched
    variable), that spare would make the next run start cold: replace it with one started in the
    environment the test left."""
    yield
    Spare = _spare_workers
    waiting = Spare._waiting
    if waiting is None or waiting[0].poll() is not None or not _same_environment(waiting[1], dict(os.environ)):
        Spare.release()
        Spare.prepare()


@pytest.fixture(autouse=True)
def _collect_garbage_on_the_gui_thread():
    """The last test's widgets are garbage only once its fixtures are gone: collect them here, on
    the GUI thread. Left alone, a library's gc.collect() on the training thread (accelerate calls
    one) would destroy them there, which Qt reports as "Timers cannot be started from another
    thread"."""
    import gc

    gc.collect()
    yield


@pytest.fixture()
def settings(tmp_path, tiny_model):
    """Settings in a temporary .ini, remembering the tiny model so no test loads SmolLM2."""
    from PySide6.QtCore import QSettings

    from qlora_studio.gui.settings import Settings

    s = Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    s.set("setup/model", str(tiny_model))
    s.set("setup/data", "sample:dates")
    s.set("setup/output_dir", str(tmp_path / "runs"))
    s.sync()
    return s


@pytest.fixture()
def window(qtbot, settings):
    from qlora_studio.gui.main_window import MainWindow

    w = MainWindow(settings)
    w.resize(1400, 900)
    w.show()
    yield w
    close_window(qtbot, w)


@pytest.fixture(scope="session")
def two_runs(tiny_model, tmp_path_factory):
    """Two finished tiny runs, double quant on and off, in one output folder."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training

    out = tmp_path_factory.mktemp("finished-runs")
    base = RunConfig.model_validate({
        "model": {"name_or_path": str(tiny_model)},
        "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
        "lora": {"r": 8, "alpha": 16},
        "train": {"max_steps": 12, "micro_batch_size": 4, "grad_accum": 2, "learning_rate": 2e-2,
                  "save_every_steps": 6, "warmup_ratio": 0.0},
        "output_dir": str(out),
    })
    dirs = []
    for name, dq in (("dq-on", True), ("dq-off", False)):
        result = run_training(base.with_overrides({"run_name": name, "quantization.double_quant": dq}))
        assert result.status == "finished", result.error
        dirs.append(result.run_dir)
    return out, dirs
