"""The setup page: pickers and toggles build the config; model info, X-ray, memory panel, presets,
YAML files."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt

from qlora_studio.core.config import field_help, load_config
from qlora_studio.resources import PRESETS


def test_opens_prefilled_with_the_demo_so_start_works(window, tiny_model):
    setup = window.setup
    demo = load_config(PRESETS / "demo.yaml")
    # the demo preset, with the model and data the user last used (here: the tiny model)
    assert setup.config.model.name_or_path == str(tiny_model)
    assert setup.config.data.path == "sample:dates"
    assert setup.config.train == demo.train and setup.config.lora == demo.lora
    assert window.start_action.isEnabled() and not window.stop_action.isEnabled()
    # every toggle explains itself with the config's own docs
    assert setup.widget("quantization.double_quant").toolTip() == field_help("quantization.double_quant")
    assert setup.widget("quantization.mode").buttons["4bit"].toolTip() == field_help("quantization.mode")
    assert setup.widget("train.grad_accum").toolTip() == field_help("train.grad_accum")


def test_pickers_and_toggles_build_the_config(window, qtbot, tmp_path, tiny_model):
    setup = window.setup
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")

    setup.widget("model.name_or_path").lineEdit().clear()
    qtbot.keyClicks(setup.widget("model.name_or_path").lineEdit(), str(tiny_model))
    setup.widget("data.path").clear()
    qtbot.keyClicks(setup.widget("data.path"), str(data))
    qtbot.mouseClick(setup.widget("quantization.mode").buttons["8bit"], Qt.MouseButton.LeftButton)
    assert setup.config.quantization.mode == "8bit"
    assert not setup.widget("quantization.double_quant").isEnabled() and not setup.widget("quantization.quant_type").isEnabled()
    qtbot.mouseClick(setup.widget("quantization.mode").buttons["4bit"], Qt.MouseButton.LeftButton)
    qtbot.mouseClick(setup.widget("quantization.quant_type").buttons["fp4"], Qt.MouseButton.LeftButton)
    qtbot.mouseClick(setup.widget("quantization.double_quant"), Qt.MouseButton.LeftButton)
    setup.widget("quantization.compute_dtype").setCurrentText("float32")
    setup.widget("lora.r").setValue(32)
    setup.widget("lora.target_modules").setCurrentText("q_proj, v_proj")
    setup.widget("train.max_steps").setValue(50)
    lr = setup.widget("train.learning_rate")
    lr.lineEdit().selectAll()
    qtbot.keyClicks(lr.lineEdit(), "3e-4")
    qtbot.keyClick(lr.lineEdit(), Qt.Key.Key_Return)

    c = setup.config
    assert c.model.name_or_path == str(tiny_model)
    assert c.data.path == str(data)
    assert (c.quantization.mode, c.quantization.quant_type, c.quantization.double_quant,
            c.quantization.compute_dtype) == ("4bit", "fp4", False, "float32")
    assert c.lora.r == 32 and c.lora.target_modules == ["q_proj", "v_proj"]
    assert c.train.max_steps == 50 and abs(c.train.learning_rate - 3e-4) < 1e-12
    setup.widget("train.max_steps").setValue(0)  # the special value: back to epochs
    assert setup.config.train.max_steps is None


def test_start_waits_while_setup_shows_an_error(window, qtbot, tmp_path):
    """Issue 12: Start was allowed while Setup showed an error (a rejected value, an unreachable
    model, a broken dataset); each try opened a dialog and left a failed run folder. Start is
    disabled with the reason as its tooltip, and comes back when the error is gone."""
    setup, start = window.setup, window.start_action
    targets = setup.widget("lora.target_modules")
    targets.setCurrentText(" , ")
    assert not setup.valid
    assert setup.problem_label.isVisibleTo(window) and "empty" in setup.problem_label.text()
    assert targets.property("invalid") is True
    assert setup.config.lora.target_modules == "all-linear"  # the last good value is kept
    assert not start.isEnabled() and "empty" in start.toolTip()
    assert window.start_training() is False and window.last_error_box is None  # no dialog
    targets.setCurrentText("mlp")
    assert setup.valid and setup.config.lora.target_modules == "mlp" and start.isEnabled()

    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"text": "fine"}\n{"text": broken\n{"text": "fine too"}\n')
    with qtbot.waitSignal(setup.xray.report_ready, timeout=60_000, check_params_cb=lambda r: r.source == str(bad_rows)):
        setup.widget("data.path").setText(str(bad_rows))
    assert not start.isEnabled() and "1 bad row" in start.toolTip() and "Skip bad rows" in start.toolTip()
    setup.widget("data.skip_bad_rows").setChecked(True)
    assert start.isEnabled()

    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json at all\n")
    with qtbot.waitSignal(setup.xray.report_failed, timeout=60_000, check_params_cb=lambda why: "broken" in why):
        setup.widget("data.path").setText(str(broken))
    assert not start.isEnabled() and "the dataset cannot be read" in start.toolTip()
    assert setup.xray.tabs.tabText(1) == "Rows"  # not the last readable dataset's "Rows (3 of 3)"
    setup.widget("data.path").setText("sample:dates")
    with qtbot.waitSignal(setup.model.info_failed, timeout=60_000):
        setup.widget("model.name_or_path").setCurrentText(str(tmp_path / "no-such-model"))
    qtbot.waitUntil(lambda: not start.isEnabled(), timeout=60_000)
    assert "no such folder" in start.toolTip()
    assert window.start_training() is False and not (tmp_path / "runs").exists()


def test_model_info_reads_config_json_without_weights(window, qtbot, tiny_model):
    setup = window.setup
    runner = setup.model.info_task
    with qtbot.waitSignal(runner.result, timeout=60_000,
                          check_params_cb=lambda name, info: name == str(tiny_model)):
        setup.widget("model.name_or_path").setCurrentText(str(tiny_model) + "/")  # a new value, the same folder
        setup.widget("model.name_or_path").setCurrentText(str(tiny_model))
    text = setup.model.info_label.text()
    assert "LlamaForCausalLM" in text and "2 layers" in text and "2,048" in text


def test_model_info_shows_a_one_line_reason_for_a_bad_model(window, qtbot, tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    with qtbot.waitSignal(window.setup.model.info_task.error, timeout=30_000):
        window.setup.widget("model.name_or_path").setCurrentText(str(bad))
    assert "config" in window.setup.model.info_label.text()


def test_dataset_xray_shows_format_rows_example_histogram_and_bad_rows(window, qtbot, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": str(2 * i)}]} for i in range(40)]
    rows.insert(7, {"messages": [{"role": "user", "content": "no reply here"}]})
    data = tmp_path / "math.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    xray = window.setup.xray
    with qtbot.waitSignal(xray.report_ready, timeout=60_000,
                          check_params_cb=lambda r: r.source == str(data)):
        window.setup.widget("data.path").setText(str(data))
    report = xray.report
    assert report.format == "messages" and report.rows == 40 and report.bad_rows == 1
    assert "messages" in xray.summary.text() and "1 bad" in xray.summary.text()
    assert xray.rows.rowCount() == 40 and xray.rows.item(0, 2).text() == "What is 0 plus 0?"
    html = xray.example.toHtml()
    assert "#bbf7d0" in html and "What is 0 plus 0?" in xray.example.toPlainText()
    trained = "".join(s["text"] for s in report.examples[0]["segments"] if s["trained"])
    assert trained.startswith("0")  # the reply, and only the reply, is trained
    heights = xray.bars.opts["height"]
    assert sum(heights) == report.rows
    counts = xray.histogram.getPlotItem().getAxis("left")
    assert all(float(v).is_integer() for _, level in counts.tickValues(0, 3, 200) for v in level)  # whole examples
    assert "math.jsonl:8" in xray.problems.toPlainText() and "no assistant turn" in xray.problems.toPlainText()
    assert xray.alert.isVisibleTo(window)  # training would stop on the bad row...
    window.setup.widget("data.skip_bad_rows").setChecked(True)
    assert not xray.alert.isVisibleTo(window)  # ...unless it is skipped


def test_dataset_xray_reports_a_missing_file(window, qtbot, tmp_path):
    xray = window.setup.xray
    with qtbot.waitSignal(xray.report_failed, timeout=60_000) as blocker:
        window.setup.widget("data.path").setText(str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in blocker.args[0]
    assert "Cannot read the dataset" in xray.summary.text()


def test_memory_bar_follows_the_settings(window, qtbot, tiny_config):
    memory = window.setup.memory
    with qtbot.waitSignal(memory.estimate_ready, timeout=60_000, check_params_cb=lambda e: e.tokens == 4 * 128):
        window.setup.set_config(tiny_config)
    small = memory.estimate.total_bytes
    parts_before = list(memory.bar.parts)
    assert parts_before == memory.estimate.parts() and parts_before[0][0] == "weights"
    saving = memory.estimate.double_quant_saving_bytes  # negative on the tiny model: tables outweigh savings
    assert f"{abs(saving) / 2**20:.2f}" in memory.dq_label.text() or f"{saving / 2**20:.1f}" in memory.dq_label.text()

    with qtbot.waitSignal(memory.estimate_ready, timeout=60_000, check_params_cb=lambda e: e.tokens == 32 * 128):
        window.setup.widget("train.micro_batch_size").setValue(32)
    assert memory.estimate.total_bytes > small and memory.bar.parts != parts_before
    assert "GiB" in memory.total_label.text() or "MiB" in memory.total_label.text()

    with qtbot.waitSignal(memory.estimate_ready, timeout=60_000, check_params_cb=lambda e: not e.double_quant):
        qtbot.mouseClick(window.setup.widget("quantization.double_quant"), Qt.MouseButton.LeftButton)
    assert memory.dq_label.text().startswith("Double quant is off")
    assert memory.estimate.quant_constants_bytes != memory.estimate.quant_constants_other_setting_bytes


def test_memory_estimate_is_the_planners_one_number(window, qtbot, tiny_config):
    """The panel shows what `qlora-studio estimate` and the run predict for this config and card,
    with what it assumes (packed micro-batches of micro-batch x max_length tokens) and includes."""
    from qlora_studio.core.planner.plan import estimate_config

    setup, memory = window.setup, window.setup.memory
    memory.select_budget(24)
    config = tiny_config.with_overrides({"data.max_length": 1000})
    with qtbot.waitSignal(memory.estimate_ready, timeout=60_000, check_params_cb=lambda e: e.tokens == 4 * 1000):
        setup.set_config(config)
    assert memory.estimate.total_bytes == estimate_config(config, 24).total_bytes
    assert "micro-batches of 4,000 packed tokens" in memory.assumes_label.text()
    assert "PyTorch peak" in memory.assumes_label.text() and "Predicted peak" in memory.total_label.text()
    assert memory.predicted_peak_gb(config) == round(memory.estimate.peak_allocated_bytes / 2**30, 3)


def test_make_it_fit_changes_micro_batch_and_grad_accum(window, qtbot, tiny_config):
    setup, memory = window.setup, window.setup.memory
    config = tiny_config.with_overrides({"train.micro_batch_size": 1, "train.grad_accum": 8})
    with qtbot.waitSignal(memory.estimate_ready, timeout=60_000, check_params_cb=lambda e: e.micro_batch == 1):
        setup.set_config(config)
    memory.select_budget(8)
    assert memory.budget_gb == 8.0
    with qtbot.waitSignal(memory.fitted, timeout=60_000):
        qtbot.mouseClick(memory.fit_button, Qt.MouseButton.LeftButton)
    t = setup.config.train
    assert t.micro_batch_size * t.grad_accum == 8  # the effective batch is kept
    assert t.micro_batch_size > 1 and t.grad_accum < 8
    assert setup.widget("train.micro_batch_size").value() == t.micro_batch_size
    assert setup.widget("train.grad_accum").value() == t.grad_accum
    assert memory.message.isVisibleTo(window) and "effective batch stays 8" in memory.message.text()


def test_presets_load_and_keep_the_output_folder(window, settings):
    setup = window.setup
    setup.widget("lora.r").setValue(64)
    setup.widget("model.name_or_path").setCurrentText("someone/else")
    combo = setup.preset_combo
    index = combo.findText("demo")
    combo.setCurrentIndex(index)
    combo.activated.emit(index)
    demo = load_config(PRESETS / "demo.yaml")
    assert setup.config.model == demo.model and setup.config.lora.r == 16
    assert setup.config.quantization == demo.quantization and setup.config.train == demo.train
    assert setup.config.output_dir == settings.output_dir()
    assert setup.widget("lora.r").value() == 16 and setup.widget("quantization.mode").value() == "4bit"


def test_config_saves_and_loads_as_yaml(window, tmp_path, tiny_config):
    setup = window.setup
    setup.set_config(tiny_config.with_overrides({"lora.r": 12, "quantization.double_quant": False}))
    path = tmp_path / "mine.yaml"
    assert setup.save_config_file(path)
    assert load_config(path) == setup.config

    # a config file's relative paths mean "next to the file"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    other = tiny_config.with_overrides({"data.path": "data/train.jsonl", "output_dir": "myruns", "lora.r": 4})
    other.save(tmp_path / "other.yaml")
    assert setup.load_config_file(tmp_path / "other.yaml")
    assert setup.config.lora.r == 4 and setup.widget("lora.r").value() == 4
    assert setup.config.data.path == str(tmp_path / "data" / "train.jsonl")
    assert setup.config.output_dir == str(tmp_path / "myruns")
    assert window.runs.output_dir == str(tmp_path / "myruns")

    (tmp_path / "broken.yaml").write_text("lora:\n  rank: 8\n")
    assert not setup.load_config_file(tmp_path / "broken.yaml")
    assert "did you mean 'lora.r'" in window.last_error_box.text()
