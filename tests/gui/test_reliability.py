"""The window's side of issue 14: a NaN run's dialog and its mark on the loss chart (live and
replayed), the trust-remote-code warning, the pickle question, and no Hub token in a dialog."""

from __future__ import annotations

import shutil

import torch
from gui_helpers import run_to_end
from safetensors.torch import load_file

from qlora_studio.core.errors import FailureCause


def test_a_nan_run_shows_a_dialog_and_marks_the_step_on_the_loss_chart(window, qtbot, tiny_config):
    window.setup.set_config(tiny_config.with_overrides({"train.learning_rate": 1e30, "train.save_every_steps": 1,
                                                        "train.max_steps": 6}))
    result = run_to_end(qtbot, window, window.start_training)
    assert result.status == "failed" and result.cause is FailureCause.NAN
    box = window.last_error_box
    assert box.windowTitle() == "Training diverged (NaN/Inf)" and box.isVisible()
    assert box.text().startswith("the loss became NaN at step 2;") and "\n" not in box.text()
    monitor = window.monitor
    assert monitor.status == "failed" and monitor.nan_marks.steps == [2]
    line, cross = monitor.nan_marks.items
    assert line.value() == 2 and line.label.toPlainText() == "NaN"
    x, y = cross.getData()
    assert list(x) == [2] and y[0] == monitor.loss_chart.series["raw"].y[0]  # on the last finite loss (step 1)
    assert "Failed: the loss became NaN at step 2" in monitor.log_text()
    box.close()

    window.replay_run(result.run_dir)  # the mark comes back from the run folder
    qtbot.waitUntil(lambda: monitor.header.title.text() == result.run_dir.rstrip("/").split("/")[-1], timeout=10_000)
    assert monitor.nan_marks.steps == [2] and len(monitor.nan_marks.items) == 2


def test_trust_remote_code_says_whose_code_runs_and_is_dropped_with_the_model(window, tiny_model):
    setup = window.setup
    trust = setup.widget("model.trust_remote_code")
    note = setup.groups.dependents["trust_warning"]
    assert not trust.isChecked() and not setup.config.model.trust_remote_code and note.isHidden()
    trust.click()
    assert setup.config.model.trust_remote_code and not note.isHidden()
    assert str(tiny_model) in note.text() and "will run on this computer" in note.text()
    setup.widget("model.name_or_path").setCurrentText("someone/another-model")
    assert not setup.config.model.trust_remote_code and not trust.isChecked() and note.isHidden()


def test_a_pickled_model_starts_only_after_a_yes(window, qtbot, tiny_config, tiny_model, tmp_path, monkeypatch):
    from qlora_studio.core.model.consent import CONSENT_VARIABLE

    monkeypatch.setenv(CONSENT_VARIABLE, "")
    folder = tmp_path / "pickled"
    folder.mkdir()
    for path in tiny_model.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, folder / path.name)
    torch.save(load_file(tiny_model / "model.safetensors"), folder / "pytorch_model.bin")
    window.setup.set_config(tiny_config.with_overrides({"model.name_or_path": str(folder), "train.max_steps": 1}))
    asked = []
    monkeypatch.setattr(window, "ask_pickle_consent", lambda origin, files: asked.append(files) or False)
    assert window.start_training() is False and not window.controller.running
    assert asked == [["pytorch_model.bin"]] and "pickled" in window.statusBar().currentMessage()

    monkeypatch.setattr(window, "ask_pickle_consent", lambda origin, files: asked.append(files) or True)
    result = run_to_end(qtbot, window, window.start_training)
    assert result.status == "finished" and len(asked) == 2


def test_a_task_error_never_shows_a_hub_token(monkeypatch):
    from qlora_studio.gui.workers.tasks import TaskError

    token = "hf_" + "Z" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    try:
        raise OSError(f"401 for https://huggingface.co/api?token={token}")
    except OSError as exc:
        error = TaskError.of(exc)
    assert token not in error.reason + error.details and "hf_***" in error.reason
