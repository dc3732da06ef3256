"""The editor of `train.grpo.rewards`: one row per reward (preset, weight, pattern or function,
length bounds), its editors made from `RewardSettings`' own fields like the rest of the form, with
Add and a remove button per row. Core validates the list; this only lays it out."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QPushButton, QToolButton, QVBoxLayout, QWidget

from qlora_studio.core.config.methods import PRESET_FIELDS, RewardSettings
from qlora_studio.gui.widgets.form import Binding, ValueEditor, bind, editor_for_field

# The columns: (field, header); the pattern and the function share the third column (a python
# reward has no pattern).
COLUMNS = [("preset", "Preset"), ("weight", "Weight"), ("pattern", "Pattern"), ("min_chars", "Min chars"),
           ("max_chars", "Max chars")]
NUMBER_WIDTH = 72
PLACEHOLDERS = {"exact_match": "default: the <answer> tag, else the last number", "regex": "a regular expression",
                "format": "default: <think>…</think><answer>…</answer>", "python": "path/to/file.py:function_name"}


class RewardRow:
    """One reward's editors, bound to the fields of a `RewardSettings`."""

    def __init__(self, editor: "RewardsEditor"):
        self.bindings: dict[str, Binding] = {}
        for name in (*(n for n, _ in COLUMNS), "function"):
            info = RewardSettings.model_fields[name]
            widget = editor_for_field(info, "–" if name.endswith("_chars") else None)
            self.bindings[name] = bind(f"reward.{name}", widget, info)
            self.bindings[name].changed.connect(lambda *_: editor.edited(self))
        self.bindings["weight"].widget.setSingleStep(0.1)
        for name in ("weight", "min_chars", "max_chars"):  # as wide as their numbers, not as their range
            self.bindings[name].widget.setMaximumWidth(NUMBER_WIDTH)
        self.remove_button = QToolButton()
        self.remove_button.setText("✕")
        self.remove_button.setObjectName("removeRewardButton")
        self.remove_button.setToolTip("Remove this reward")
        self.remove_button.clicked.connect(lambda: editor.remove(self))

    @property
    def preset(self) -> str:
        return self.bindings["preset"].get()

    def widgets(self) -> list[QWidget]:
        return [binding.widget for binding in self.bindings.values()] + [self.remove_button]

    def value(self) -> dict[str, Any]:
        return {name: binding.get() for name, binding in self.bindings.items()}

    def set_value(self, reward: dict[str, Any]) -> None:
        for name, binding in self.bindings.items():
            binding.widget.blockSignals(True)
            try:
                binding.put(reward.get(name, RewardSettings.model_fields[name].default))
            finally:
                binding.widget.blockSignals(False)
        self.show_preset()

    def show_preset(self) -> None:
        """The editors the preset reads (core's PRESET_FIELDS; the others are greyed out, their values
        stay); the text column holds the function of a python reward."""
        preset = self.preset
        reads = PRESET_FIELDS.get(preset, ())
        for name, binding in self.bindings.items():
            binding.widget.setEnabled(name in ("preset", "weight") or name in reads)
        python = preset == "python"
        self.bindings["pattern"].widget.setVisible(not python)
        self.bindings["function"].widget.setVisible(python)
        text = self.bindings["function" if python else "pattern"].widget
        text.setPlaceholderText(PLACEHOLDERS.get(preset, "not used by this preset"))


class RewardsEditor(ValueEditor):
    """The rewards of a GRPO run as rows; `rows[i].bindings[field].widget` for tests."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.rows: list[RewardRow] = []
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(6)
        self.grid.setVerticalSpacing(4)
        for column, (name, text) in enumerate(COLUMNS):
            header = QLabel(text if name != "pattern" else "Pattern / function")
            header.setObjectName("hint")
            header.setToolTip(RewardSettings.model_fields[name].description or "")
            self.grid.addWidget(header, 0, column)
        self.grid.setColumnStretch(2, 1)
        self.add_button = QPushButton("Add reward")
        self.add_button.setObjectName("addRewardButton")
        self.add_button.setToolTip("Another reward; each answer gets the weighted sum of all of them")
        self.add_button.clicked.connect(self.add_reward)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.grid)
        layout.addLayout(buttons)

    # ---- the Binding protocol (widgets.form) ----
    def value(self) -> list[dict[str, Any]]:
        return [row.value() for row in self.rows]

    def setValue(self, rewards: list[Any] | None) -> None:  # noqa: N802 - Qt naming
        rewards = [r.model_dump() if isinstance(r, RewardSettings) else dict(r) for r in rewards or []]
        while len(self.rows) > len(rewards):
            self._drop(self.rows[-1])
        while len(self.rows) < len(rewards):
            self._append()
        for row, reward in zip(self.rows, rewards, strict=True):
            row.set_value(reward)
        self._update()

    # ---- editing ----
    def add_reward(self) -> None:
        self._append().set_value({})
        self._update()
        self.changed.emit()

    def remove(self, row: RewardRow) -> None:
        if len(self.rows) > 1:  # a GRPO run needs a reward
            self._drop(row)
            self._update()
            self.changed.emit()

    def edited(self, row: RewardRow) -> None:
        row.show_preset()
        self.changed.emit()

    def _append(self) -> RewardRow:
        row = RewardRow(self)
        self.rows.append(row)
        self._place()
        return row

    def _drop(self, row: RewardRow) -> None:
        self.rows.remove(row)
        for widget in row.widgets():
            self.grid.removeWidget(widget)
            widget.deleteLater()
        self._place()

    def _place(self) -> None:
        for r, row in enumerate(self.rows, start=1):
            b = row.bindings
            cells = [b["preset"].widget, b["weight"].widget, None, b["min_chars"].widget, b["max_chars"].widget,
                     row.remove_button]
            for column, widget in enumerate(cells):
                if widget is not None:
                    self.grid.addWidget(widget, r, column)
            for name in ("pattern", "function"):  # one of them shows at a time
                self.grid.addWidget(b[name].widget, r, 2)

    def _update(self) -> None:
        for row in self.rows:
            row.remove_button.setEnabled(len(self.rows) > 1)
            row.show_preset()


def python_functions(rewards: list[dict[str, Any]]) -> list[str]:
    """The functions the python rewards of `rewards` name (what would run as code)."""
    return [r.get("function") or "(no function yet)" for r in rewards if r.get("preset") == "python"]
