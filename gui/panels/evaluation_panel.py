"""The playground's Evaluate tab: base vs tuned on the run's validation split or another file, as a
small table (exact match, stopped by itself, validation loss, perplexity) and the first replies
side by side. Core computes and saves it (core/after/evaluation.py); this shows it."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.core.after.scores import METRICS
from qlora_studio.gui import fmt
from qlora_studio.gui.widgets.form import guard_wheel

RUN_SPLIT, OTHER_FILE = "The run's validation split", "Another file…"


def _cell(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    return {"percent": f"{value:.1%}", "loss": f"{value:.4f}", "ppl": f"{value:.2f}", "number": f"{value:.3f}"}[kind]


def evaluation_summary(evaluation) -> str:
    """One line for the runs page: exact match and loss, tuned (base)."""
    if evaluation is None:
        return "–"
    t, b = evaluation.tuned, evaluation.base
    parts = []
    if t.exact_match is not None:
        parts.append(f"EM {t.exact_match:.0%}" + (f" (base {b.exact_match:.0%})" if b and b.exact_match is not None else ""))
    if t.eval_loss is not None:
        parts.append(f"loss {t.eval_loss:.3f}" + (f" ({b.eval_loss:.3f})" if b and b.eval_loss is not None else ""))
    return ", ".join(parts) or "–"


class EvaluationPanel(QWidget):
    run_requested = Signal(object, object, int)  # data file or None (the run's split), row limit or None, max new tokens

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.ref = None
        self.result = None
        self.source = QComboBox()
        self.source.setObjectName("evalSource")
        self.source.addItems([RUN_SPLIT, OTHER_FILE])
        self.path = QLineEdit()
        self.path.setObjectName("evalPath")
        self.path.setPlaceholderText("a .jsonl/.json/.csv/.parquet file, a folder, or sample:dates-eval")
        self.browse = QPushButton("Browse…")
        self.limit = QSpinBox()
        self.limit.setObjectName("evalLimit")
        self.limit.setRange(0, 1_000_000)
        self.limit.setSpecialValueText("all rows")
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setObjectName("evalMaxNewTokens")
        self.max_new_tokens.setRange(1, 4096)
        self.max_new_tokens.setValue(64)
        for widget in (self.source, self.limit, self.max_new_tokens):
            guard_wheel(widget)  # scrolling the page must not change a setting it passes over
        self.path.setMinimumWidth(80)
        self.run_button = QPushButton("Evaluate base and tuned")
        self.run_button.setObjectName("evaluateButton")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopEvaluateButton")
        row = QHBoxLayout()
        for widget in (QLabel("Rows"), self.source, self.path, self.browse, QLabel("Limit"), self.limit,
                       QLabel("Max new tokens"), self.max_new_tokens, self.run_button, self.stop_button):
            row.addWidget(widget)
        row.setStretch(2, 1)
        self.progress = QProgressBar()
        self.progress.setObjectName("evalProgress")
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.status = QLabel("Load a run above, then evaluate it.")
        self.status.setObjectName("hint")
        self.status.setWordWrap(True)

        self.table = QTableWidget(len(METRICS), 3)
        self.table.setObjectName("evalTable")
        self.table.setHorizontalHeaderLabels(["Base", "Tuned", "Change"])
        self.table.setVerticalHeaderLabels([m[0] for m in METRICS])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(200)
        self.examples = QTableWidget(0, 4)
        self.examples.setObjectName("evalExamples")
        self.examples.setHorizontalHeaderLabels(["Prompt", "Expected", "Base", "Tuned"])
        self.examples.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.examples.setWordWrap(True)
        self.examples.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.examples.verticalHeader().setVisible(False)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.examples)
        split.setSizes([170, 400])

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)

        self.source.currentIndexChanged.connect(self._source_changed)
        self.browse.clicked.connect(self._browse)
        self.run_button.clicked.connect(self.request)
        self._source_changed()

    def _source_changed(self) -> None:
        other = self.source.currentText() == OTHER_FILE
        self.path.setEnabled(other)
        self.browse.setEnabled(other)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Rows to evaluate on", self.path.text(),
                                              "Data (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)")
        if path:
            self.path.setText(path)

    def request(self) -> None:
        data = None
        if self.source.currentText() == OTHER_FILE:
            data = self.path.text().strip()
            if not data:
                self.status.setText("Choose a file to evaluate on.")
                return
        self.run_requested.emit(data, self.limit.value() or None, self.max_new_tokens.value())

    # ---- shown ----
    def set_run(self, ref) -> None:
        """A new adapter is loaded: show its newest saved evaluation, if any."""
        from qlora_studio.core.after.evaluation import read_evaluations

        self.ref = ref
        saved = [e for e in read_evaluations(ref.run_dir) if e.adapter == ref.label] if ref.run_dir else []
        if saved:
            self.show_result(max(saved, key=lambda e: e.created_at), fresh=False)
        else:
            self._clear()
            self.status.setText(f"{ref.name}: not evaluated yet.")

    def started(self) -> None:
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.status.setText("Evaluating: tuned first, then base (the adapter switched off)…")

    def show_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(f"{fraction:.0%}  {message}")

    def failed(self, reason: str) -> None:
        self.progress.setFormat("stopped" if "cancel" in reason else "failed")
        self.status.setText(reason)

    def show_result(self, evaluation, fresh: bool = True) -> None:
        self.result = evaluation
        e = evaluation
        for row, (_, key, kind, higher_better) in enumerate(METRICS):
            base = getattr(e.base, key) if e.base else None
            tuned = getattr(e.tuned, key)
            # a preference run's ranking, a GRPO run's reward: rows only where the method has them
            self.table.setRowHidden(row, key in ("ranks_chosen", "reward") and base is None and tuned is None)
            change = ""
            if base is not None and tuned is not None:
                delta = tuned - base
                change = f"{delta:+.1%}" if kind == "percent" else f"{delta:+.4g}"
            for col, text in enumerate((_cell(base, kind), _cell(tuned, kind), change)):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(row, col, item)
        self.examples.setRowCount(len(e.examples))
        for row, example in enumerate(e.examples):
            for col, key in enumerate(("prompt", "reference", "base", "tuned")):
                text = example.get(key, "")
                item = QTableWidgetItem(text if text else "(empty)")
                item.setToolTip(text)
                self.examples.setItem(row, col, item)
        self.examples.resizeRowsToContents()
        when = "" if fresh else f", {fmt.timestamp(e.created_at)}"
        self.status.setText(f"{e.adapter} adapter on {e.data}: {e.rows} replies (up to {e.max_new_tokens} tokens), "
                            f"loss on {e.loss_rows} rows, {fmt.duration(e.seconds)}{when}; saved in the run folder "
                            f"(evaluation.json)")
        if fresh:
            self.progress.setValue(1000)
            self.progress.setFormat("done")

    def _clear(self) -> None:
        self.result = None
        self.table.clearContents()
        self.examples.setRowCount(0)
        self.progress.setValue(0)
        self.progress.setFormat("")

    def set_enabled(self, loaded: bool, busy: bool) -> None:
        self.run_button.setEnabled(loaded and not busy)
        self.stop_button.setEnabled(busy)
