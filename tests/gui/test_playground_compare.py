"""The playground compares a second run: base · run A (SFT) · run B (DPO) in three columns, labelled
with their methods, each message answered by all three from one loaded base; a run on another base
model is refused through the page's error path; picking nothing goes back to two columns."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qlora_studio.core.config.files import load_config


def idle(qtbot, page, timeout=120_000):
    qtbot.waitUntil(lambda: not page.busy, timeout=timeout)


@pytest.fixture()
def runs(tiny_run, tiny_dpo_run, tmp_path):
    """The SFT and the DPO run of the tiny model in one runs folder."""
    root = tmp_path / "compare-runs"
    for run in (tiny_run, tiny_dpo_run):
        shutil.copytree(run.run_dir, root / Path(run.run_dir).name)
    return root, root / "tiny-run", root / "tiny-dpo"


def columns(page) -> list[str]:
    """The sides of the visible columns, left to right."""
    splitter = page.chat.splitter
    panes = {pane: side for side, pane in page.chat.panes.items()}
    return [panes[splitter.widget(i)] for i in range(splitter.count()) if not splitter.widget(i).isHidden()]


def test_a_second_run_answers_in_a_third_column(window, qtbot, runs):
    root, sft, dpo = runs
    page = window.playground
    page.set_output_dir(str(root))
    assert window.open_playground(str(sft))
    idle(qtbot, page)
    assert columns(page) == ["tuned", "base"]
    with qtbot.waitSignal(page.controller.compared, timeout=60_000):
        assert page.compare_with.select(str(dpo))
    idle(qtbot, page)
    assert columns(page) == ["base", "tuned", "compared"]
    titles = {side: label.text() for side, label in page.chat.side_titles.items()}
    assert titles["tuned"] == "A: tiny-run (final) · SFT" and titles["compared"] == "B: tiny-dpo (final) · DPO"
    assert "tiny-dpo (final) · DPO answers beside it" in page.compare_with.note.text()
    session = page.controller._worker.session
    assert len(session.model.peft_config) == 2  # one base, two adapters

    replies = []
    page.controller.replied.connect(lambda side, reply: replies.append(side))
    page.max_new_tokens.setValue(8)
    assert page.send("Say red.")
    idle(qtbot, page)
    assert replies == ["tuned", "compared", "base"]  # streamed, one after the other
    answers = {side: t.messages for side, t in page.transcripts.items()}
    assert all([m["role"] for m in answers[side]] == ["user", "assistant"] for side in ("tuned", "base", "compared"))
    from qlora_studio.core.after.inference import COMPARED
    from qlora_studio.core.model.generation import Sampling

    expected = session.replies([[{"role": "user", "content": "Say red."}]], Sampling(8), side=COMPARED)
    assert answers["compared"][1]["content"] == expected[0].text  # the DPO run, in its own chat template
    assert session.model.active_adapter == session.ADAPTER

    with qtbot.waitSignal(page.controller.compared, timeout=60_000):
        page.compare_with.select(None)
    idle(qtbot, page)
    assert columns(page) == ["tuned", "base"] and page.chat.side_titles["tuned"].text() == "Tuned: tiny-run (final) · SFT"
    assert len(page.transcripts["tuned"].messages) == 2  # dropping the comparison keeps the conversation
    assert list(session.model.peft_config) == [session.ADAPTER]


def test_a_run_on_another_base_is_refused_in_the_error_path(window, qtbot, runs, tiny_base_model):
    root, sft, dpo = runs
    other = root / "other-base"
    shutil.copytree(dpo, other)
    load_config(other / "config.yaml").with_overrides({"model.name_or_path": str(tiny_base_model)}).save(
        other / "config.yaml")
    page = window.playground
    page.set_output_dir(str(root))
    assert window.open_playground(str(sft))
    idle(qtbot, page)
    with qtbot.waitSignal(page.error, timeout=60_000) as refused:
        assert page.compare_with.select(str(other))
    idle(qtbot, page)
    title, reason, _details = refused.args
    assert title == "Compare" and "\n" not in reason and str(tiny_base_model) in reason and "same base model" in reason
    assert page.compare_with.selected() is None and columns(page) == ["tuned", "base"]
    assert page.controller.compared_ref is None and window.last_error_box.isVisible()
    window.last_error_box.close()
    assert page.send("Say red.")  # the loaded run still answers
    idle(qtbot, page)
    assert len(page.transcripts["tuned"].messages) == 2
