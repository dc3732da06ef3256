"""The window's ways into other tools: report_to check boxes, the TensorBoard hint, CSV export of a
run's metrics, the model library and importing another tool's config."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication


def test_report_to_check_boxes_edit_the_config(window, qtbot):
    choices = window.setup.widget("train.report_to")
    assert set(choices.boxes) == {"tensorboard", "wandb"}
    qtbot.mouseClick(choices.boxes["tensorboard"], Qt.MouseButton.LeftButton)
    assert window.setup.config.train.report_to == ["tensorboard"]
    window.setup.set_config(window.setup.config.with_overrides({"train.report_to": ["wandb", "tensorboard"]}))
    assert choices.boxes["wandb"].isChecked() and choices.boxes["tensorboard"].isChecked()


def test_csv_export_and_tensorboard_hint_of_a_replayed_run(window, qtbot, two_runs, tmp_path):
    out, dirs = two_runs
    run_dir = Path(shutil.copytree(dirs[0], tmp_path / "other-runs" / "with-tb"))
    plain_dir = Path(shutil.copytree(dirs[1], tmp_path / "other-runs" / "plain"))
    (run_dir / "tensorboard").mkdir()  # a run that reported to TensorBoard
    window.setup.widget("output_dir").setText(str(run_dir.parent))
    runs = window.runs
    runs.select_paths([run_dir])
    assert runs.csv_button.isEnabled()
    target = tmp_path / "metrics.csv"
    assert runs.export_csv(str(target)) == str(target)
    rows = list(csv.DictReader(target.open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13)) and "eval_loss" in rows[0]
    assert "12 steps" in runs.hint.text()

    with qtbot.waitSignal(window.monitor.history_loaded, timeout=30_000):
        qtbot.mouseClick(runs.replay_button, Qt.MouseButton.LeftButton)
    hint = window.monitor.tensorboard
    assert hint.isVisible() and str(run_dir / "tensorboard") in hint.command
    qtbot.mouseClick(hint.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == f'tensorboard --logdir "{run_dir / "tensorboard"}"'
    runs.select_paths([plain_dir])  # no TensorBoard events: no hint
    with qtbot.waitSignal(window.monitor.history_loaded, timeout=30_000):
        qtbot.mouseClick(runs.replay_button, Qt.MouseButton.LeftButton)
    assert not hint.isVisible()


def test_model_library_lists_fits_uses_deletes_and_downloads(window, qtbot, tmp_path, monkeypatch, tiny_model):
    import huggingface_hub
    from fakehub import FakeHub, cache_model

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    files = {p.name: p.read_bytes() for p in Path(tiny_model).iterdir() if p.is_file()}
    cache_model(cache, "org/tiny-llama", files)
    picker = window.setup.model
    dialog = picker.open_library()
    with qtbot.waitSignal(dialog.fitted, timeout=120_000):
        pass
    (row,) = [i for i, m in enumerate(dialog.models) if m.name == "org/tiny-llama"]
    cells = [dialog.table.item(row, col).text() for col in range(6)]
    assert cells[:2] == ["org/tiny-llama", "HF cache"] and cells[3] == "LlamaForCausalLM"
    assert cells[2].endswith(("KiB", "MiB")) and cells[4].endswith("K") and cells[5] == "fits"
    assert "org/tiny-llama" in [picker.combo.itemText(i) for i in range(picker.combo.count())]

    dialog.select("org/tiny-llama")
    qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)
    assert window.setup.config.model.name_or_path == "org/tiny-llama" and not dialog.isVisible()

    dialog = picker.open_library()
    with qtbot.waitSignal(dialog.scanned, timeout=60_000):
        pass
    dialog.select("org/tiny-llama")
    with qtbot.waitSignal(dialog.scanned, timeout=60_000):
        dialog.delete_selected(confirm=False)
    assert "org/tiny-llama" not in [m.name for m in dialog.models] and not (cache / "models--org--tiny-llama").exists()

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the download's own process reads the variable
    with FakeHub({"org/small": files}) as hub:
        with qtbot.waitSignal(dialog.download_finished, timeout=120_000) as finished:
            assert dialog.downloads.start("org/small", endpoint=hub.endpoint)
            assert dialog.downloads.progress.isVisible() and dialog.downloads.cancel_button.isVisible()
    assert finished.args == ["org/small"] and "Downloaded org/small" in dialog.downloads.status.text()
    with qtbot.waitSignal(dialog.scanned, timeout=60_000):
        pass
    assert dialog.selected().name == "org/small" and dialog.selected().trainable
    dialog.close()


def test_import_an_axolotl_config_into_the_setup_page(window, qtbot, tmp_path):
    example = Path(__file__).parents[1] / "core" / "import_examples" / "axolotl_llama3_qlora.yml"
    output_dir = window.setup.config.output_dir
    dialog = window.setup.import_config(example)
    table = dialog.dropped_table
    keys = [table.item(row, 0).text() for row in range(table.rowCount())]
    assert "sample_packing" in keys and "special_tokens" in keys
    assert dialog.save(tmp_path / "imported.yaml").read_text().startswith("# Imported from axolotl_llama3_qlora.yml")
    qtbot.mouseClick(dialog.open_button, Qt.MouseButton.LeftButton)
    config = window.setup.config
    assert (config.model.name_or_path, config.lora.r, config.lora.alpha) == ("NousResearch/Meta-Llama-3-8B", 32, 16.0)
    assert (config.data.format, config.train.optimizer) == ("alpaca", "paged_adamw_32bit")
    assert config.output_dir == output_dir  # runs stay in the user's folder
    assert window.setup.widget("lora.r").value() == 32

    bad = tmp_path / "bad.yaml"
    bad.write_text("foo: 1\n")
    with qtbot.waitSignal(window.setup.error) as error:
        assert window.setup.import_config(bad) is None
    assert error.args[0] == "Import config" and "cannot tell" in error.args[1]
