"""The playground's "Compare with…" picker: a second run (and its final adapter or a checkpoint)
to answer beside the loaded one, or nothing. Bound to the page's chat worker, it asks it to load or
drop the comparison whenever the choice and what is loaded differ (waiting while the worker is
busy), shows the third column when one is loaded, and says why one was refused."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from qlora_studio.gui.widgets.form import fit_text_width, guard_wheel

NOTHING = "nothing (base and tuned only)"


class ComparePicker(QWidget):
    changed = Signal()  # the run or the adapter to compare with changed
    refused = Signal(str, str)  # reason, details: the comparison could not load (a run on another base model)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.run_combo = QComboBox()
        self.run_combo.setObjectName("compareRun")
        self.adapter_combo = QComboBox()
        self.adapter_combo.setObjectName("compareAdapter")
        self.adapter_combo.setToolTip("The compared run's final adapter, or its adapter as it was at a checkpoint")
        fit_text_width(self.run_combo, 30)  # as wide as the Run box above it
        self.run_combo.setMinimumWidth(220)
        fit_text_width(self.adapter_combo, 12)
        for combo in (self.run_combo, self.adapter_combo):
            guard_wheel(combo)  # scrolling the page must not change a setting it passes over
        self.note = QLabel("")
        self.note.setObjectName("hint")
        self.note.setMinimumWidth(1)  # a long run name is cut short here (the tooltip has it), never widens the window
        self.label = QLabel("Compare with…")
        self.label.setToolTip("A second run on the same base model (an SFT and a DPO run, say): base, the loaded run "
                              "and this one answer each message side by side, from one copy of the base weights")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.label, self.run_combo, QLabel("Adapter"), self.adapter_combo):
            layout.addWidget(widget)
        layout.addWidget(self.note, 1)
        self.run_combo.currentIndexChanged.connect(self._fill_adapters)
        self.run_combo.currentTextChanged.connect(self.run_combo.setToolTip)  # the whole name, where the box cuts it
        self.adapter_combo.currentIndexChanged.connect(lambda _index: self.changed.emit())
        self.controller = self.chat = None
        self.training: Callable[[], bool] = lambda: False
        self.fill([])

    def bind(self, controller, chat, training: Callable[[], bool]) -> None:
        """Drive `controller` (the page's ChatController) from the choice; show the result in `chat`."""
        self.controller, self.chat, self.training = controller, chat, training
        self.changed.connect(self.sync)
        controller.compared.connect(self._on_compared)
        controller.failed.connect(lambda what, error: self._refuse(error.reason, error.details) if what == "compare" else None)
        controller.busy_changed.connect(lambda busy: None if busy else self.sync())

    def sync(self) -> None:
        """Ask the worker to load (or drop) the picked comparison when it differs from what is loaded;
        while the worker is busy (loading the run, answering) this waits for it to be idle."""
        from qlora_studio.core.after.adapters import locate_adapter
        from qlora_studio.core.errors import UserError

        c = self.controller
        want = self.selected()
        if c is None or c.ref is None or c.busy or self.training() or want == adapter_key(c.compared_ref):
            return
        try:
            ref = locate_adapter(*want) if want else None
        except UserError as exc:
            self._refuse(str(exc))
            return
        if ref is not None:
            self.set_note(f"Loading {ref.name} beside {c.ref.name}…")
        c.compare(ref)

    def _on_compared(self, ref, how: str = "") -> None:
        method = method_of(ref) if ref is not None else ""
        self.chat.set_comparison(ref.name if ref is not None else None, method)
        self.set_note("" if ref is None else f"{ref.name} · {method} answers beside it" + (f" (loaded {how})" if how else ""))

    def _refuse(self, reason: str, details: str = "") -> None:
        """Say why the comparison cannot load, and pick again what is loaded (nothing, or the earlier one)."""
        have = self.controller.compared_ref
        self.select(*(adapter_key(have) or (None,)))
        self.set_note(f"{have.name} · {method_of(have)} answers beside it" if have is not None else "")
        self.refused.emit(reason, details)

    def fill(self, runs: list[tuple[str, str, list]]) -> None:
        """(label, run folder, [(adapter label, step)]) of each run with an adapter; keeps the choice."""
        current = self.selected()
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        self.run_combo.addItem(NOTHING, None)
        for label, path, adapters in runs:
            self.run_combo.addItem(label, (path, adapters))
        self.run_combo.blockSignals(False)
        index = next((i for i in range(1, self.run_combo.count()) if current and self.run_combo.itemData(i)[0] == current[0]), 0)
        self.run_combo.setCurrentIndex(index)
        self._fill_adapters(keep=current[1] if current and index else None)

    def _fill_adapters(self, _index: int = 0, keep: str | None = None) -> None:
        self.adapter_combo.blockSignals(True)
        self.adapter_combo.clear()
        data = self.run_combo.currentData()
        for label, step in data[1] if data else []:
            self.adapter_combo.addItem("final adapter" if step is None else f"checkpoint {label}", label)
        self.adapter_combo.setCurrentIndex(max(self.adapter_combo.findData(keep), 0) if keep else 0)
        self.adapter_combo.setEnabled(data is not None)
        self.adapter_combo.blockSignals(False)
        self.changed.emit()

    def select(self, run_dir: str | None, adapter: str = "final") -> bool:
        """Pick `run_dir` (None: nothing) and its adapter `adapter`; False if it is not listed."""
        for i in range(self.run_combo.count()):
            data = self.run_combo.itemData(i)
            if (data[0] if data else None) == (str(run_dir) if run_dir else None):
                self.run_combo.blockSignals(True)
                self.run_combo.setCurrentIndex(i)
                self.run_combo.blockSignals(False)
                self._fill_adapters(keep=adapter)
                return True
        return False

    def selected(self) -> tuple[str, str] | None:
        """(run folder, adapter label) to compare with, or None."""
        data = self.run_combo.currentData()
        return (data[0], self.adapter_combo.currentData() or "final") if data else None

    def set_note(self, text: str) -> None:
        self.note.setText(text)
        self.note.setToolTip(text)


def adapter_key(ref) -> tuple[str, str] | None:
    """(run folder, adapter label) of a loaded adapter, as the pickers name it."""
    return None if ref is None else (str(ref.run_dir or ref.adapter_dir), ref.label)


def method_of(ref) -> str:
    """The method a run was trained with, as its column says it: SFT, DPO, ORPO, KTO, GRPO."""
    from qlora_studio.core.runs.store import summarize_run

    return (summarize_run(ref.run_dir).method if ref.run_dir is not None else ref.config.train.method).upper()
