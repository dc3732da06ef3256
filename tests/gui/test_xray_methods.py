"""The dataset X-ray past SFT: pairs side by side with what max_length cuts, KTO's rated answers,
GRPO's prompts and reference answers, the Rows tab's columns per method, the identical pairs left
out; and Setup re-reads it when the method changes, moving the bundled demo data along (never the
user's own)."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextTable

from qlora_studio.core.config.methods import METHOD_SAMPLES

LONG = "Sure! " + "The date is written with the year first, then the month, then the day. " * 6


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def headers(xray) -> list[str]:
    return [xray.rows.horizontalHeaderItem(i).text() for i in range(xray.rows.columnCount())]


def read(setup, qtbot, overrides: dict, method: str, path: str):
    """Apply `overrides` and wait for the X-ray's report of `path` read for `method`."""
    xray = setup.xray
    with qtbot.waitSignal(xray.report_ready, timeout=60_000,
                          check_params_cb=lambda r: r.method == method and r.source == path):
        setup.set_config(setup.config.with_overrides(overrides))
    return xray.report


def tables(browser) -> list[QTextTable]:
    return [frame for frame in browser.document().rootFrame().childFrames() if isinstance(frame, QTextTable)]


def cell(table: QTextTable, row: int, column: int) -> str:
    c = table.cellAt(row, column)
    cursor = c.firstCursorPosition()
    cursor.setPosition(c.lastCursorPosition().position(), cursor.MoveMode.KeepAnchor)
    return cursor.selectedText().replace("\u2029", "\n")


def test_a_preference_set_shows_pairs_side_by_side_what_is_cut_and_the_pairs_left_out(window, qtbot, tmp_path):
    rows = [{"prompt": "Normalize the date: June the first, 1903", "chosen": "1903-06-01", "rejected": "1902-06-01"},
            {"prompt": "Rewrite as an ISO date: May 6, 2070", "chosen": "2070-05-06", "rejected": LONG},
            {"prompt": "Date: 3 May 1990", "chosen": "1990-05-03", "rejected": "1990-05-03"},  # teaches nothing
            {"prompt": "Date: 9 June 2001", "chosen": "2001-06-09", "rejected": "09/06/2001"},
            {"prompt": "Date: 1 July 1999", "chosen": "1999-07-01", "rejected": "1999-01-07"}]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    setup, xray = window.setup, window.setup.xray
    report = read(setup, qtbot, {"train.method": "dpo", "data.path": path, "data.max_length": 64,
                                 "data.validation_split": 0.0}, "dpo", path)
    assert report.flagged_rows == 1 and report.cut_rows == 1
    summary = xray.summary.text()
    for part in ("<b>preference</b>", "5 pairs", "4 train / 0 validation", "1 identical pair left out",
                 "1 cut at max_length 64", "tokens per pair"):
        assert part in summary, summary
    assert "% of tokens trained" not in summary  # SFT's share of trained tokens means nothing for pairs

    # the example: the prompt once, then chosen and rejected side by side, the cut end said in red
    assert xray.tabs.currentWidget() is xray.example
    pairs = tables(xray.example)
    assert len(pairs) == 3 and all(t.columns() == 2 for t in pairs)
    assert (cell(pairs[0], 0, 0), cell(pairs[0], 0, 1)) == ("chosen ✔", "rejected ✘")
    assert cell(pairs[0], 1, 0).startswith("1903-06-01") and cell(pairs[0], 1, 1).startswith("1902-06-01")
    cut = report.examples[1]["rejected"]["cut_tokens"]
    assert cut > 0 and f"… {cut} tokens cut at max_length (not trained)" in cell(pairs[1], 1, 1)
    assert "cut at max_length" not in cell(pairs[1], 1, 0)  # the short chosen answer is whole
    text = xray.example.toPlainText()
    assert text.count("Rewrite as an ISO date: May 6, 2070") == 1  # the prompt, once, above the pair
    assert "#bbf7d0" in xray.example.toHtml()  # the answers in the trained style

    # the rows: the method's columns
    assert headers(xray) == ["Where", "Prompt", "Chosen", "Rejected"]
    assert xray.rows.rowCount() == 4 and xray.tabs.tabText(1) == "Rows (4 of 5)"
    assert [xray.rows.item(0, c).text() for c in (1, 2, 3)] == [rows[0]["prompt"], "1903-06-01", "1902-06-01"]
    assert xray.rows.item(0, 0).text().endswith("pairs.jsonl:1")

    # the problems: the identical pair, where it is; core's cut warning
    problems = xray.problems.toPlainText()
    assert "pairs.jsonl:3: chosen and rejected are identical" in problems and "left out" in problems
    assert "longer than data.max_length 64" in problems
    assert problems.count("pairs.jsonl:3") == 1  # core's "left out 1 pair (first: ...)" is not repeated
    assert xray.tabs.tabText(3) == "Problems (2)"
    assert not xray.alert.isVisibleTo(window)  # left-out pairs do not stop training


def test_kto_shows_rated_answers_and_grpo_prompts_with_their_reference_answers(window, qtbot, tmp_path):
    setup, xray = window.setup, window.setup.xray
    rated = write_rows(tmp_path / "rated.jsonl", [
        {"prompt": f"Date: {d} May 1990", "completion": f"1990-05-{d:02d}" if d % 3 else "May 1990", "label": bool(d % 3)}
        for d in range(1, 10)])
    report = read(setup, qtbot, {"train.method": "kto", "data.path": rated, "data.validation_split": 0.0}, "kto", rated)
    assert report.labels == {"desirable": 6, "undesirable": 3}
    assert "<b>unpaired</b>" in xray.summary.text() and "9 train (6 desirable / 3 undesirable) / 0 validation" in (
        xray.summary.text())
    assert headers(xray) == ["Where", "Prompt", "Completion", "Label"]
    assert [xray.rows.item(2, c).text() for c in (2, 3)] == ["May 1990", "undesirable ✘"]
    assert xray.rows.item(0, 3).text() == "desirable ✔"
    example = xray.example.toPlainText()
    assert "desirable ✔" in example and "1990-05-01" in example and not tables(xray.example)

    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "Compute 38 + 17.", "answer": "55"},
                                                      {"prompt": "Compute 4 * 4.", "answer": "16"},
                                                      {"prompt": "Say hello."}])
    report = read(setup, qtbot, {"train.method": "grpo", "data.path": prompts}, "grpo", prompts)
    summary = xray.summary.text()
    assert "3 prompts" in summary and f"{report.answers} of {report.train_rows} with a reference answer" in summary
    assert headers(xray) == ["Where", "Prompt", "Answer"]
    assert [xray.rows.item(0, c).text() for c in (1, 2)] == ["Compute 38 + 17.", "55"]
    example = xray.example.toPlainText()
    assert "the answers are sampled during training; rewards score them" in example
    assert "reference answer: 55" in example and "no reference answer" in example
    assert "tokens trained" not in example  # nothing in the rows is trained on

    # back to SFT: the X-ray looks as it always did
    report = read(setup, qtbot, {"train.method": "sft", "data.path": "sample:dates"}, "sft", "sample:dates")
    assert headers(xray) == ["Where", "Turns", "First prompt", "First reply"]
    assert "% of tokens trained" in xray.summary.text() and "tokens trained" in xray.example.toPlainText()


def test_switching_method_rereads_the_xray_and_moves_only_the_demo_data(window, qtbot, tmp_path):
    setup, xray = window.setup, window.setup.xray
    box = setup.groups.method
    data = setup.widget("data.path")
    qtbot.waitUntil(lambda: xray.report is not None and xray.report.source == "sample:dates", timeout=60_000)
    assert xray.report.method == "sft" and "Demo data: sample:dates." in box.summary.text()

    def pick(method: str, path: str):
        with qtbot.waitSignal(xray.report_ready, timeout=60_000,
                              check_params_cb=lambda r: r.method == method and r.source == path):
            qtbot.mouseClick(setup.widget("train.method").buttons[method], Qt.MouseButton.LeftButton)
        assert setup.config.train.method == method and setup.config.data.path == path == data.text()
        assert "<b>preference</b>" in xray.summary.text() or method not in ("dpo", "orpo")

    pick("dpo", METHOD_SAMPLES["dpo"])  # the demo data of SFT becomes DPO's, in the same edit
    assert f"Demo data: {METHOD_SAMPLES['dpo']}." in box.summary.text()
    pick("orpo", METHOD_SAMPLES["orpo"])  # the same data: only the method changed, and the X-ray read again
    pick("kto", METHOD_SAMPLES["kto"])
    assert "<b>unpaired</b>" in xray.summary.text()

    own = write_rows(tmp_path / "mine.jsonl", [{"prompt": f"Date: {d} May 1990", "chosen": f"1990-05-{d:02d}",
                                                "rejected": f"1990-{d:02d}-05"} for d in range(1, 13)])
    with qtbot.waitSignal(xray.report_ready, timeout=60_000, check_params_cb=lambda r: r.source == own):
        data.setText(own)
    pick("dpo", own)  # the user's own data stays
    assert "Demo data" not in box.summary.text()
    pick("kto", own)  # KTO reads the same pairs, split in two
    assert "each pair split in two" in xray.summary.text()
