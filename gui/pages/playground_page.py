"""The playground: pick a run and one of its adapters (the final one or a checkpoint), then chat with
it, its base model answering the same messages beside it, or evaluate base vs tuned on held-out
rows. "Compare with…" adds a second run on the same base (an SFT and a DPO run, say): base, run A
and run B answer each message in three columns, from one copy of the base weights. The model lives
on the page's worker thread (`ChatController`); replies stream in token by token and Stop ends them
between two tokens.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QTabWidget, QVBoxLayout, QWidget

from qlora_studio.gui.panels.chat_panel import ChatPanel
from qlora_studio.gui.panels.compare_picker import ComparePicker, method_of
from qlora_studio.gui.panels.evaluation_panel import EvaluationPanel
from qlora_studio.gui.widgets.form import fit_text_width, guard_wheel
from qlora_studio.gui.workers.chat import ChatController, EvaluateRequest

TRAINING_NOTE = ("A run is training: the playground waits until it pauses or ends (it would share the device with "
                 "it). Paused, its checkpoints can be loaded here.")


class PlaygroundPage(QWidget):
    export_requested = Signal(str, str)  # run folder, adapter label
    error = Signal(str, str, str)  # (title, reason, details)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.output_dir: str | None = None
        self.training = False
        self.controller = ChatController(self)

        # ---- which model ----
        self.run_combo = QComboBox()
        self.run_combo.setObjectName("playgroundRun")
        self.run_combo.setMinimumWidth(320)
        self.adapter_combo = QComboBox()
        self.adapter_combo.setObjectName("playgroundAdapter")
        self.adapter_combo.setToolTip("The final adapter, or the adapter as it was at a checkpoint")
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("loadModelButton")
        self.export_button = QPushButton("Export…")
        self.export_button.setObjectName("playgroundExportButton")
        self.status = QLabel("Pick a run and load it.")
        self.status.setObjectName("hint")
        top = QHBoxLayout()
        run_label = QLabel("Run")
        for widget in (run_label, self.run_combo, QLabel("Adapter"), self.adapter_combo, self.load_button,
                       self.export_button):
            top.addWidget(widget)
        top.addWidget(self.status, 1)
        self.compare_with = ComparePicker()
        self.compare_with.setObjectName("comparePicker")
        # the two pickers' boxes in one column: their labels as wide as the wider one
        width = max(run_label.sizeHint().width(), self.compare_with.label.sizeHint().width())
        for label in (run_label, self.compare_with.label):
            label.setFixedWidth(width)

        fit_text_width(self.run_combo, 30)  # a long run name must not widen the window
        self.run_combo.setMinimumWidth(220)
        fit_text_width(self.adapter_combo, 12)
        for widget in (self.run_combo, self.adapter_combo):
            guard_wheel(widget)  # scrolling the page must not change a setting it passes over

        self.chat = ChatPanel()
        # the chat's parts, by the names the tests read
        self.system, self.compare, self.max_new_tokens = self.chat.system, self.chat.compare, self.chat.max_new_tokens
        self.transcripts, self.input = self.chat.transcripts, self.chat.input
        self.send_button, self.stop_button = self.chat.send_button, self.chat.stop_button
        self.evaluation = EvaluationPanel()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.chat, "Chat")
        self.tabs.addTab(self.evaluation, "Evaluate")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addLayout(top)
        layout.addWidget(self.compare_with)
        layout.addWidget(self.tabs, 1)

        self.run_combo.currentIndexChanged.connect(self._fill_adapters)
        self.load_button.clicked.connect(self.load_selected)
        self.export_button.clicked.connect(self._export)
        self.chat.send_requested.connect(self.send)
        self.stop_button.clicked.connect(self.controller.stop)
        self.evaluation.run_requested.connect(self._evaluate)
        self.evaluation.stop_button.clicked.connect(self.controller.stop)
        c = self.controller
        c.loaded.connect(self._on_loaded)
        c.chunk.connect(self.chat.add_chunk)
        c.replied.connect(self.chat.finish)
        c.progress.connect(self.evaluation.show_progress)
        c.evaluated.connect(self.evaluation.show_result)
        c.failed.connect(self._on_failed)
        c.busy_changed.connect(lambda _busy: self._update())
        self.compare_with.bind(c, self.chat, lambda: self.training)
        self.compare_with.refused.connect(lambda reason, details: self.error.emit("Compare", reason, details))
        self._update()

    # ---- runs and adapters ----
    def set_output_dir(self, output_dir: str) -> None:
        if output_dir != self.output_dir:
            self.output_dir = output_dir
            self.refresh()

    def refresh(self) -> None:
        from qlora_studio.core.after.adapters import available_adapters
        from qlora_studio.core.runs.store import list_runs

        current = self.run_combo.currentData()
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        runs = []
        for run in list_runs(self.output_dir) if self.output_dir else []:
            adapters = available_adapters(run.path)
            if adapters:
                runs.append((f"{run.name} · {run.method.upper()} · {Path(run.model).name} · {run.status}",
                             str(run.path), adapters))
                self.run_combo.addItem(runs[-1][0], (str(run.path), adapters))
        self.run_combo.blockSignals(False)
        self.compare_with.fill(runs)
        index = next((i for i in range(self.run_combo.count()) if current and self.run_combo.itemData(i)[0] == current[0]), 0)
        self.run_combo.setCurrentIndex(index)
        self._fill_adapters()

    def _fill_adapters(self) -> None:
        self.adapter_combo.clear()
        data = self.run_combo.currentData()
        for label, step in data[1] if data else []:
            self.adapter_combo.addItem("final adapter" if step is None else f"checkpoint {label}", label)
        self._update()

    def select(self, run_dir: str, adapter: str = "final") -> bool:
        """Pick `run_dir` (and its adapter `adapter`) in the combos; False if it has no adapter."""
        self.refresh()
        for i in range(self.run_combo.count()):
            if self.run_combo.itemData(i)[0] == str(run_dir):
                self.run_combo.setCurrentIndex(i)
                found = self.adapter_combo.findData(adapter)
                self.adapter_combo.setCurrentIndex(max(found, 0))
                return True
        return False

    def selected(self) -> tuple[str, str] | None:
        data = self.run_combo.currentData()
        return (data[0], self.adapter_combo.currentData() or "final") if data else None

    def load_selected(self) -> bool:
        from qlora_studio.core.after.adapters import locate_adapter
        from qlora_studio.core.errors import UserError

        chosen = self.selected()
        if chosen is None or self.training:
            return False
        try:
            ref = locate_adapter(chosen[0], chosen[1])
        except UserError as exc:
            self.error.emit("Playground", str(exc), "")
            return False
        self.status.setText(f"Loading {ref.name}…")
        return self.controller.load(ref)

    def _on_loaded(self, ref, where: str) -> None:
        self.status.setText(f"{ref.name} loaded {where}")
        self.chat.show_loaded(ref.name, ref.config.data.system_prompt, method_of(ref))
        self.evaluation.set_run(ref)
        self._update()

    # ---- chat ----
    def send(self, text: str | None = None) -> bool:
        text = (text if isinstance(text, str) else self.input.toPlainText()).strip()
        if not text or self.controller.busy or self.controller.ref is None:
            return False
        return self.controller.chat(self.chat.take_message(text))

    # ---- evaluation and export ----
    def _evaluate(self, data: str | None, limit: int | None, max_new_tokens: int) -> None:
        if self.controller.evaluate(EvaluateRequest(data, limit, max_new_tokens)):
            self.evaluation.started()

    def _export(self) -> None:
        chosen = self.selected()
        if chosen:
            self.export_requested.emit(*chosen)

    def _on_failed(self, what: str, error) -> None:
        if what == "load":
            self.status.setText("Not loaded")
        if what == "evaluate":
            self.evaluation.failed(error.reason)
        if what == "compare":
            return  # the picker says why (`refused`) and picks again what is loaded
        self.chat.break_off()
        if not (what == "evaluate" and "cancelled" in error.reason):
            self.error.emit({"load": "Load model", "chat": "Chat", "evaluate": "Evaluate"}[what], error.reason, error.details)

    # ---- state ----
    def set_training(self, training: bool) -> None:
        """While a run trains the playground waits, and gives its model's memory back."""
        self.training = training
        if training:
            self.controller.stop()
            self._free_for_training()
        self._update()

    def _free_for_training(self) -> None:
        if not self.training:
            return
        if self.controller.unload():
            self.status.setText(TRAINING_NOTE)
        else:  # a reply or evaluation is ending (Stop is set): free the model once it has
            QTimer.singleShot(100, self._free_for_training)

    def _update(self) -> None:
        busy, loaded = self.controller.busy, self.controller.ref is not None
        has_run = self.run_combo.currentData() is not None
        self.load_button.setEnabled(has_run and not busy and not self.training)
        self.export_button.setEnabled(has_run and not self.training)
        self.chat.set_state(loaded and not busy and not self.training, busy)
        self.evaluation.set_enabled(loaded and not self.training, busy)
        tip = TRAINING_NOTE if self.training else ""
        for widget in (self.load_button, self.send_button, self.export_button):
            widget.setToolTip(tip)

    @property
    def busy(self) -> bool:
        return self.controller.busy

    def shutdown(self) -> None:
        self.controller.shutdown()

