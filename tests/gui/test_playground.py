"""The playground: a run's adapter and its base answer side by side, streamed from a worker thread
while the window keeps working; Stop ends a reply; evaluation shows base vs tuned. Export from the
window; the runs page's notes, rename and delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer

from qlora_studio.core.after.evaluation import read_evaluations
from qlora_studio.core.cli import main


def idle(qtbot, page, timeout=120_000):
    qtbot.waitUntil(lambda: not page.busy, timeout=timeout)


@pytest.fixture()
def playground(window, qtbot, tiny_run):
    page = window.playground
    page.set_output_dir(str(Path(tiny_run.run_dir).parent))
    assert window.open_playground(tiny_run.run_dir)
    assert window.tabs.currentWidget() is page
    idle(qtbot, page)
    assert page.controller.ref is not None and "loaded on cpu" in page.status.text()
    return page


def test_replies_stream_while_the_window_keeps_working(playground, qtbot):
    ticks = []
    timer = QTimer()
    timer.setInterval(2)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    arrivals = []  # (side, timer ticks so far) for each piece of text
    playground.controller.chunk.connect(lambda side, text: arrivals.append((side, len(ticks))))
    playground.max_new_tokens.setValue(40)
    assert playground.send("Normalize the date: March 5, 2021")
    assert not playground.send_button.isEnabled() and playground.stop_button.isEnabled()
    idle(qtbot, playground)
    timer.stop()
    assert len(arrivals) >= 3
    first, last = arrivals[0][1], arrivals[-1][1]
    # the event loop ran its timers while the reply streamed (two pieces may share a turn of the loop)
    assert last - first >= (len(arrivals) - 1) // 2
    assert len({tick for _, tick in arrivals}) > len(arrivals) // 2  # pieces arrived over many turns of the loop
    tuned, base = playground.transcripts["tuned"], playground.transcripts["base"]
    assert [m["role"] for m in tuned.messages] == [m["role"] for m in base.messages] == ["user", "assistant"]
    assert base.messages[1]["content"] != tuned.messages[1]["content"]  # adapter on vs off
    assert "tokens in" in base.toPlainText()
    # greedy: the base answer is what the core gives with the adapter switched off
    from qlora_studio.core.model.generation import Sampling

    session = playground.controller._worker.session
    expected = session.replies([[{"role": "user", "content": "Normalize the date: March 5, 2021"}]], Sampling(40), base=True)
    assert base.messages[1]["content"] == expected[0].text


def test_the_message_box_keeps_the_keyboard_after_send(playground, window, qtbot):
    from PySide6.QtCore import Qt

    window.show()
    window.activateWindow()
    playground.max_new_tokens.setValue(4)
    playground.input.setPlainText("Normalize the date: March 5, 2021")
    playground.send_button.setFocus()
    qtbot.waitUntil(playground.send_button.hasFocus)
    qtbot.mouseClick(playground.send_button, Qt.MouseButton.LeftButton)
    assert not playground.send_button.isEnabled()
    assert playground.input.hasFocus()  # not the toolbar's step box, which is next in the focus chain
    idle(qtbot, playground)
    assert playground.input.hasFocus()


def test_stop_ends_a_reply_between_tokens(playground, qtbot):
    playground.compare.setChecked(False)
    playground.max_new_tokens.setValue(4000)
    playground.controller.chunk.connect(lambda side, text: playground.stop_button.click())
    replies = []
    playground.controller.replied.connect(lambda side, reply: replies.append(reply))
    playground.system.setText("x")  # the tiny tuned model stops at once on some prompts; this one rambles
    assert playground.send("1 2 3 4 5 6 7 8 9")
    idle(qtbot, playground)
    if replies[0].stopped:  # ended by itself before any text: nothing to stop
        pytest.skip("the tiny model ended its reply at once")
    assert replies[0].cancelled and replies[0].new_tokens < 4000


def test_evaluation_in_the_window_is_saved_and_listed(window, playground, qtbot, tiny_run):
    panel = playground.evaluation
    playground.tabs.setCurrentWidget(panel)
    panel.limit.setValue(4)
    panel.max_new_tokens.setValue(8)
    panel.run_button.click()
    idle(qtbot, playground)
    result = panel.result
    assert result is not None and result.rows == 4 and result.data == "validation split"
    assert result.tuned.eval_loss < result.base.eval_loss  # training lowered the validation loss
    assert panel.table.item(2, 1).text() == f"{result.tuned.eval_loss:.4f}"
    assert [e.created_at for e in read_evaluations(tiny_run.run_dir)][-1] == result.created_at
    window.runs.set_output_dir(str(Path(tiny_run.run_dir).parent))
    window.runs.refresh()
    row = [r.name for r in window.runs.model.runs].index("tiny-run")
    assert window.runs.model.index(row, window.runs.model.COLUMNS.index("Evaluation")).data().startswith("EM ")


def test_chat_and_evaluate_on_the_command_line(tiny_run, capsys):
    assert main(["chat", tiny_run.run_dir, "--prompt", "Normalize the date: March 5, 2021", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert "[tuned," in out.err and "tokens" in out.err
    assert main(["chat", tiny_run.run_dir, "--base", "--checkpoint", "step-5", "--prompt", "Hi", "--max-new-tokens", "4"]) == 0
    assert "[base, 4 tokens" in capsys.readouterr().err
    assert main(["evaluate", tiny_run.run_dir, "--checkpoint", "step-10", "--limit", "3", "--max-new-tokens", "4",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["adapter"] == "step 10" and record["rows"] == 3 and record["base"]["eval_loss"] > 0


def test_export_from_the_window(window, qtbot, tiny_run, tmp_path):
    dialog = window.open_export(tiny_run.run_dir)
    dialog.format.setValue("adapter")
    dialog.out.setText(str(tmp_path / "adapter"))
    with qtbot.waitSignal(dialog.task.result, timeout=60_000):
        assert dialog.start()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file() and "Saved to" in dialog.message.text()
    dialog.format.setValue("gguf")
    dialog.out.setText(str(tmp_path / "m.gguf"))
    with qtbot.waitSignal(dialog.task.error, timeout=60_000) as blocker:
        assert dialog.start()
        dialog.close_button.click()  # Cancel while it runs
    assert "cancelled" in blocker.args[0].reason
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "settings.ini") == ["adapter"]  # nothing half-written
    qtbot.waitUntil(lambda: not dialog.task.running, timeout=60_000)
    assert dialog.close_button.text() == "Close"
    dialog.close()


def test_export_dialog_checks_the_export_and_greys_what_the_model_cannot_do(window, qtbot, tiny_run, tmp_path,
                                                                           monkeypatch):
    dialog = window.open_export(tiny_run.run_dir)
    dialog.format.setValue("merged")
    dialog.out.setText(str(tmp_path / "merged"))
    assert dialog.check.isEnabled() and dialog.check.isChecked()  # on by default
    with qtbot.waitSignal(dialog.task.result, timeout=120_000):
        assert dialog.start()
    assert not dialog.parity.isHidden() and "same reply" in dialog.parity.text()
    assert "validation split rows (merged: merged)" in dialog.parity.text()
    assert (Path(tiny_run.run_dir) / "parity.json").is_file()
    dialog.close()

    from qlora_studio.core.after.export import run as export_module

    reason = "GGUF export covers Llama, Mistral, SmolLM2, Qwen2 and Qwen3; Gemma 2 needs its norm offset"
    monkeypatch.setattr(export_module, "gguf_blocker", lambda ref: reason)
    dialog = window.open_export(tiny_run.run_dir)
    assert not dialog.format.buttons["gguf"].isEnabled() and not dialog.format.buttons["ollama"].isEnabled()
    assert dialog.format.value() == "merged" and dialog.format.buttons["gguf"].toolTip() == reason
    dialog.close()


def _fake_run(root: Path, name: str) -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"run_name: {name}\n")
    (run / "status.json").write_text(json.dumps({"status": "finished", "step": 3, "started_at": 1.0}))
    return run


def test_runs_page_notes_rename_and_delete_to_trash(window, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the trash of this test, not the user's
    (tmp_path / "data").mkdir()  # Qt uses $XDG_DATA_HOME/Trash only where that folder exists
    root = tmp_path / "runs"
    _fake_run(root, "first")
    _fake_run(root, "second")
    page = window.runs
    page.set_output_dir(str(root))
    page.refresh()  # the window's runs folder may already be tmp_path/runs, listed before these existed
    page.select_paths([root / "first"])
    page.notes.setPlainText("lr too high?")
    page.rename_selected("first-lr-5e-4")
    assert (root / "first-lr-5e-4" / "notes.md").read_text() == "lr too high?" and not (root / "first").exists()
    assert "run_name: first-lr-5e-4" in (root / "first-lr-5e-4" / "config.yaml").read_text()
    assert page.selected_runs()[0].name == "first-lr-5e-4" and page.notes.toPlainText() == "lr too high?"
    page.select_paths([root / "second"])
    assert page.delete_selected(confirm=False) == 1
    assert not (root / "second").exists()
    assert list((tmp_path / "data" / "Trash" / "files").iterdir())  # in the trash, not gone
    assert [r.name for r in page.model.runs] == ["first-lr-5e-4"]
