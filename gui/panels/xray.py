"""The dataset X-ray: core's `inspect_data` report shown as a summary, one rendered example with
the trained tokens highlighted, the first rows, a token-length histogram and the problems. Past SFT
the rows are pairs, rated answers or prompts, and the X-ray shows them so (xray_methods.py)."""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QLabel,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui import fmt
from qlora_studio.gui.panels import xray_methods as methods
from qlora_studio.gui.panels.xray_methods import CONTEXT_STYLE, TRAINED_STYLE
from qlora_studio.gui.widgets.axes import IntegerAxis
from qlora_studio.gui.workers.tasks import DebouncedTask

DEBOUNCE_MS = 500
SFT_COLUMNS = [("Where", False), ("Turns", False), ("First prompt", True), ("First reply", True)]
SFT_AXES = ("tokens per example", "examples")
WHERE_CHARS = 20  # the Where column's widest ("…pairs.jsonl:12"; drag for more): the rows' text is what matters


def _preview(config):
    """Bad rows are skipped and counted instead of raising, so the preview can show them; the
    window says that training stops on them unless data.skip_bad_rows is on."""
    from qlora_studio.core.data.pipeline import inspect_config

    return inspect_config(config, examples=3, preview=50, skip_bad_rows=True)


def _relevant(config) -> Any:
    """The parts of a config the preview depends on: editing LoRA or training settings skips it,
    and so does skip_bad_rows (the preview always skips and counts bad rows); a new method re-reads
    it (its rows are pairs, rated answers or prompts)."""
    return (config.model.model_dump_json(), config.data.model_dump_json(exclude={"skip_bad_rows"}), config.train.seed,
            config.train.method)


class DataXRay(QGroupBox):
    report_ready = Signal(object)  # the core DataReport, after the widgets show it
    report_failed = Signal(str)
    reading = Signal()  # a new read began: the last report or error no longer applies

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Dataset X-ray", parent)
        self.setObjectName("dataXRay")
        self.config = None
        self.report = None
        self.error: str | None = None  # why the dataset cannot be read, while that is what the X-ray shows
        self._key: Any = None
        self.skip_bad_rows = False

        self.summary = QLabel("Pick a dataset to see how it will be trained on.")
        self.summary.setObjectName("xraySummary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.alert = QLabel("")
        self.alert.setObjectName("xrayAlert")
        self.alert.setWordWrap(True)
        self.alert.hide()

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        # tighter than studio.qss's 10 px: "Rows (50 of 300)" and "Problems (1)" side by side still fit
        # a 1024 px screen's column, where a fourth tab would hide behind scroll arrows
        self.tabs.tabBar().setStyleSheet("QTabBar::tab { padding: 6px 7px; }")
        self.example = QTextBrowser()
        self.example.setObjectName("xrayExample")
        self.example.setOpenLinks(False)
        self.rows = QTableWidget(0, 0)
        self.rows.setObjectName("xrayRows")
        self._set_columns(SFT_COLUMNS)
        self.rows.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rows.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.rows.verticalHeader().setVisible(False)
        self.rows.setWordWrap(False)
        self.rows.setItemDelegateForColumn(0, _ElideLeft(self.rows))  # "…/dates.jsonl:12": the file's end tells
        # token counts and example counts are whole numbers: no "1.5 examples" on the axes
        self.histogram = pg.PlotWidget(axisItems={"left": IntegerAxis("left"), "bottom": IntegerAxis("bottom")})
        self.histogram.setObjectName("xrayHistogram")
        plot = self.histogram.getPlotItem()
        self._label_axes(SFT_AXES)
        plot.showGrid(x=False, y=True, alpha=0.15)
        plot.setMenuEnabled(False)
        self.bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush="#60a5fa", pen=pg.mkPen("#2563eb", width=0.5))
        plot.addItem(self.bars)
        self.max_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#dc2626", width=1.5, style=Qt.PenStyle.DashLine),
                                        label="max_length", labelOpts={"position": 0.9, "color": "#dc2626"})
        plot.addItem(self.max_line)
        self.problems = QTextBrowser()
        self.problems.setObjectName("xrayProblems")
        self.tabs.addTab(self.example, "Example")
        self.tabs.addTab(self.rows, "Rows")
        self.tabs.addTab(self.histogram, "Lengths")  # short: the four tabs fit a 1024 px screen's column
        self.tabs.addTab(self.problems, "Problems")

        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.alert)
        layout.addWidget(self.tabs, 1)

        self.runner = DebouncedTask(_preview, DEBOUNCE_MS, self)
        self.runner.result.connect(self._on_report)
        self.runner.error.connect(self._on_error)

    def set_config(self, config) -> None:
        self.config = config
        self.skip_bad_rows = config.data.skip_bad_rows
        key = _relevant(config)
        if key == self._key:
            self._show_alert()
            return
        self._key = key
        self._request()

    def refresh(self) -> None:
        self._key = None
        if self.config is not None:
            self.set_config(self.config)

    def _request(self) -> None:
        if self.config is None:
            return
        self.summary.setText(f"Reading <b>{fmt.escape(self.config.data.path)}</b>…")
        self.report, self.error = None, None  # what the X-ray showed no longer applies to this config
        self.reading.emit()
        self.runner.schedule(self.config, tag=self._key)

    @Slot(object, object)
    def _on_report(self, key, report) -> None:
        self.report, self.error = report, None
        self._show(report)
        self.report_ready.emit(report)

    @Slot(object, object)
    def _on_error(self, key, error) -> None:
        self.report, self.error = None, error.reason
        self.summary.setText("<span style='color:#b91c1c'><b>Cannot read the dataset:</b> "
                             f"{fmt.escape(error.reason)}</span>")
        self.alert.hide()
        self.example.clear()
        self.rows.setRowCount(0)
        self.bars.setOpts(x0=[], x1=[], height=[])
        self.problems.setPlainText(error.reason if error.cause.is_users_to_fix else error.details)
        self.tabs.setTabText(1, "Rows")  # not the counts of the last dataset that could be read
        self.tabs.setTabText(3, "Problems (1)")
        self.report_failed.emit(error.reason)

    # ---- showing a report ----
    def _show(self, r) -> None:
        self.summary.setText("<br>".join(_sft_summary(r) if r.method == "sft" else methods.summary_lines(r)))
        self._show_example(r)
        self._show_rows(r)
        self._show_histogram(r)
        self._show_problems(r)
        self._show_alert()

    def _show_alert(self) -> None:
        r = self.report
        if r is not None and r.bad_rows and not self.skip_bad_rows:
            self.alert.setText(f"⚠ {r.bad_rows:,} bad row(s): training stops on them unless "
                               "“Skip bad rows” is on (see Problems).")
            self.alert.show()
        else:
            self.alert.hide()

    def _show_example(self, r) -> None:
        if r.method != "sft":
            self.example.setHtml(methods.example_html(r))
            return
        if not r.examples:
            self.example.setHtml("<i>No example to show.</i>")
            return
        parts = [f"<p style='color:#334155'><span style='{TRAINED_STYLE}'>&nbsp;trained&nbsp;</span> tokens carry "
                 f"the loss · <span style='{CONTEXT_STYLE}'>grey</span> tokens are context</p>"]
        for number, ex in enumerate(r.examples, start=1):
            spans = []
            for segment in ex["segments"]:
                style = TRAINED_STYLE if segment["trained"] else CONTEXT_STYLE
                spans.append(f"<span style='{style}'>{fmt.escape(segment['text'])}</span>")
            parts.append(f"<p style='color:#475569;margin-top:10px'><b>Example {number}</b> · {ex['trained_tokens']} "
                         f"of {ex['tokens']} tokens trained</p>"
                         f"<pre style='white-space:pre-wrap;font-family:monospace;margin:0'>{''.join(spans)}</pre>")
        self.example.setHtml("".join(parts))

    def _set_columns(self, columns: list[tuple[str, bool]]) -> None:
        """The Rows tab's (header, stretches) columns: SFT's conversations, or a method's rows."""
        self.rows.setColumnCount(len(columns))
        self.rows.setHorizontalHeaderLabels([name for name, _ in columns])
        header = self.rows.horizontalHeader()
        for i, (_, stretch) in enumerate(columns):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.Stretch if stretch
                                        else QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)  # Where: sized in _show_rows

    def _show_rows(self, r) -> None:
        self._set_columns(SFT_COLUMNS if r.method == "sft" else methods.row_columns(r))
        self.rows.setRowCount(len(r.preview_rows))
        for i, row in enumerate(r.preview_rows):
            cells = _sft_cells(row) if r.method == "sft" else methods.row_cells(r, row)
            for col, (value, color) in enumerate(cells):
                item = QTableWidgetItem(" ".join(str(value).split())[:300])
                item.setToolTip(str(value)[:2000])
                if color:
                    item.setForeground(QColor(color))
                self.rows.setItem(i, col, item)
        self.rows.resizeColumnToContents(0)
        cap = self.rows.fontMetrics().averageCharWidth() * WHERE_CHARS  # the tab may not be laid out yet
        self.rows.setColumnWidth(0, min(self.rows.columnWidth(0), cap))
        self.tabs.setTabText(1, f"Rows ({len(r.preview_rows)} of {r.rows:,})")

    def _show_histogram(self, r) -> None:
        h = r.length_histogram
        if h and h.get("counts"):
            edges = h["edges"]
            self.bars.setOpts(x0=edges[:-1], x1=edges[1:], height=h["counts"])
            self.histogram.getPlotItem().enableAutoRange()
        else:
            self.bars.setOpts(x0=[], x1=[], height=[])
        self._label_axes(SFT_AXES if r.method == "sft" else methods.histogram_labels(r))
        self.max_line.setPos(r.max_length)
        self.max_line.label.setFormat(f"max_length {r.max_length}")

    def _show_problems(self, r) -> None:
        items = []
        for bad in r.bad_examples:
            items.append(f"<li><b>bad row</b> {fmt.escape(bad['where'])}: {fmt.escape(bad['reason'])}</li>")
        if r.bad_rows > len(r.bad_examples):
            items.append(f"<li>… and {r.bad_rows - len(r.bad_examples):,} more bad rows</li>")
        if r.method != "sft":
            items += methods.flagged_items(r)  # core's warnings say what max_length cut and dropped
        elif r.over_max_length:
            items.append(f"<li>{r.over_max_length:,} examples are longer than max_length {r.max_length}: "
                         f"{r.cut_rows} cut, {r.dropped_rows} dropped, {r.split_rows} split</li>")
        listed = [rows[0]["where"] for rows in (r.bad_examples, r.flagged_examples) if rows]
        for warning in r.warnings:
            if any(first in warning for first in listed):
                continue  # core's "skipped N bad rows (first: ...)" or "left out N pairs": the rows are listed above
            items.append(f"<li>{fmt.escape(warning)}</li>")
        eos = r.eos or {}
        eos_line = (f"<p><b>EOS</b> {'✔' if eos.get('ok') else '✘'} {fmt.escape(eos.get('message', ''))}</p>"
                    if eos else "")
        count = len(items)
        body = f"<ul>{''.join(items)}</ul>" if items else "<p>No problems found.</p>"
        self.problems.setHtml(body + eos_line)
        self.tabs.setTabText(3, f"Problems ({count})" if count else "Problems")

    def _label_axes(self, labels: tuple[str, str]) -> None:
        plot = self.histogram.getPlotItem()
        plot.setLabel("bottom", labels[0])
        plot.setLabel("left", labels[1])

    def shutdown(self) -> None:
        self.runner.shutdown()


class _ElideLeft(QStyledItemDelegate):
    """Cells cut at their start: a long path keeps its file name and line."""

    def initStyleOption(self, option, index) -> None:  # noqa: N802 - Qt's name
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideLeft


def _sft_summary(r) -> list[str]:
    t = r.token_lengths
    share = r.trained_tokens / r.total_tokens * 100 if r.total_tokens else 0
    fmt_mix = f" (mixed: {', '.join(f'{k} {v}' for k, v in r.formats.items())})" if len(r.formats) > 1 else ""
    lines = [
        f"<b>{fmt.escape(r.format)}</b>{fmt.escape(fmt_mix)} · {r.rows:,} rows"
        + (f" (<span style='color:#b91c1c'>{r.bad_rows:,} bad</span>)" if r.bad_rows else "")
        + f" · {r.train_rows:,} train / {r.eval_rows:,} validation · template <b>{fmt.escape(r.template)}</b>",
    ]
    if t:
        lines.append(
            f"tokens p50 <b>{t['p50']:.0f}</b> · p90 <b>{t['p90']:.0f}</b> · p99 <b>{t['p99']:.0f}</b> · "
            f"max <b>{t['max']}</b> · {r.over_max_length:,} over max_length {r.max_length} · "
            f"{share:.0f}% of tokens trained")
    if r.batching:
        lines.append(fmt.escape(r.batching))
    return lines


def _sft_cells(row: dict[str, Any]) -> list[tuple[str, None]]:
    """A conversation's (text, color) cells: where, turns, its first prompt and first reply."""
    messages = row.get("messages") or []
    if messages:
        prompt = next((m["content"] for m in messages if m["role"] == "user"), "")
        reply = next((m["content"] for m in messages if m["role"] == "assistant"), "")
        turns = str(len(messages))
    else:
        prompt, reply, turns = row.get("text", ""), "", "text"
    return [(value, None) for value in (row.get("where", ""), turns, prompt, reply)]
