"""The taste-test grid: one row per probe prompt, one column per time the model answered them (the
base before step 1, then every checkpoint), filled live from `ProbesAnswered` events and from a
run folder's probes.jsonl when replaying. An answer that differs from the column before it is
shown in bold; one that hit the token limit without ending ends in "…"; the column header carries
the eval loss of that step when there is one."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.core.runs import events as ev
from qlora_studio.gui import fmt

CHANGED = QColor("#1e3a8a")
UNCHANGED = QColor("#334155")
CELL_WIDTH = 220


class ProbeGrid(QGroupBox):
    def __init__(self, parent: QWidget | None = None):
        super().__init__("Taste test: probe answers per checkpoint", parent)
        self.setObjectName("probeGrid")
        self.prompts: list[str] = []
        self.columns: list[ev.ProbesAnswered] = []
        self.eval_losses: dict[int, float] = {}
        self.seconds = 0.0

        self.note = QLabel("No probes in this run: add prompts under Setup → Taste test to watch the answers change.")
        self.note.setObjectName("hint")
        self.note.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.setObjectName("probeTable")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        self.table.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setMaximumWidth(260)
        self.table.horizontalHeader().setDefaultSectionSize(CELL_WIDTH)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 6)
        layout.addWidget(self.note)
        layout.addWidget(self.table, 1)
        self.clear()

    # ---- content ----
    def clear(self, prompts: list[str] | None = None) -> None:
        self.prompts = list(prompts or [])
        self.columns = []
        self.eval_losses = {}
        self.seconds = 0.0
        self.table.clear()
        self.table.setColumnCount(0)
        self._set_rows()

    def _set_rows(self) -> None:
        self.table.setRowCount(len(self.prompts))
        self.table.setVerticalHeaderLabels([_short(p, 60) for p in self.prompts])
        for row, prompt in enumerate(self.prompts):
            self.table.verticalHeaderItem(row).setToolTip(prompt)
        self.table.setVisible(bool(self.prompts))
        self.note.setVisible(not self.prompts)
        self._update_title()

    def add(self, answered: ev.ProbesAnswered) -> None:
        """One column of answers (a column for the same step replaces the earlier one)."""
        prompts = [a["prompt"] for a in answered.answers]
        if prompts != self.prompts:  # the first answers tell the prompts (a replay, a resumed run)
            if self.columns:
                self.clear(prompts)
            else:
                self.prompts = prompts
                self._set_rows()
        self.columns = [c for c in self.columns if (c.step, c.base) != (answered.step, answered.base)]
        self.columns.append(answered)
        self.columns.sort(key=lambda c: (not c.base, c.step))
        self.seconds = sum(c.seconds for c in self.columns)
        self._redraw()

    def set_eval_loss(self, step: int, eval_loss: float) -> None:
        self.eval_losses[step] = eval_loss
        if any(not c.base and c.step == step for c in self.columns):
            self._set_headers()

    def answer(self, row: int, column_label: str) -> str | None:
        """The answer shown for probe `row` in the column labelled `column_label` ("base", "step 5")."""
        for column in self.columns:
            if column.label == column_label:
                return column.answers[row]["reply"]
        return None

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.columns]

    # ---- drawing ----
    def _redraw(self) -> None:
        table = self.table
        table.setColumnCount(len(self.columns))
        previous: list[str] | None = None
        for col, column in enumerate(self.columns):
            replies = [a["reply"] for a in column.answers]
            for row, answer in enumerate(column.answers):
                text = answer["reply"] or "(empty)"
                if not answer.get("stopped", True):
                    text += " …"
                scored = reward_line(answer.get("rewards"))
                if scored:  # GRPO: the sampled answer's rewards, as training scores it
                    text += f"\n[{scored}]"
                item = QTableWidgetItem(text)
                changed = previous is not None and row < len(previous) and previous[row] != answer["reply"]
                font = QFont(item.font())
                font.setBold(changed)
                item.setFont(font)
                item.setForeground(CHANGED if changed else UNCHANGED)
                ending = "ended by itself" if answer.get("stopped", True) else "hit the token limit"
                item.setToolTip(f"{column.label}, {answer.get('tokens', 0)} tokens, {ending}:\n\n{answer['reply']}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
                table.setItem(row, col, item)
            previous = replies
        self._set_headers()
        table.resizeRowsToContents()
        if self.columns:
            table.scrollToItem(table.item(0, len(self.columns) - 1))
        self._update_title()

    def _set_headers(self) -> None:
        labels = []
        for column in self.columns:
            loss = None if column.base else self.eval_losses.get(column.step)
            labels.append(column.label + (f"\neval {loss:.3f}" if loss is not None else ""))
        self.table.setHorizontalHeaderLabels(labels)

    def _update_title(self) -> None:
        if not self.prompts:
            self.setTitle("Taste test: probe answers per checkpoint")
            return
        spent = f"; {fmt.duration(self.seconds)} spent answering (not in tokens/s)" if self.columns else ""
        self.setTitle(f"Taste test: {len(self.prompts)} probe{'s' if len(self.prompts) > 1 else ''}, "
                      f"{len(self.columns)} column{'s' if len(self.columns) != 1 else ''}{spent}")


def _short(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def reward_line(rewards: dict | None) -> str:
    """'reward 0.50 · exact_match 0 · length 1.00' for a GRPO probe answer; '' for other methods."""
    if not rewards:
        return ""
    shown = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731 - None: the reward skipped this prompt
    parts = [f"reward {shown(rewards.get('total'))}"]
    parts += [f"{name} {shown(value)}" for name, value in rewards.items() if name != "total"]
    return " · ".join(parts)
