"""The playground: pick a run and one of its adapters (the final one or a checkpoint), then chat with
it, its base model answering the same messages beside it, or evaluate base vs tuned on held-out
rows. The model lives on the page's worker thread (`ChatController`); replies stream in token by
token and Stop ends them between two tokens.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui import fmt
from qlora_studio.gui.workers.chat import ChatController, ChatRequest, EvaluateRequest
from qlora_studio.gui.panels.evaluation_panel import EvaluationPanel
from qlora_studio.gui.widgets.form import fit_text_width, guard_wheel

SIDES = ("tuned", "base")
SIDE_TITLES = {"tuned": "Tuned (base + adapter)", "base": "Base model (adapter off)"}
TRAINING_NOTE = ("A run is training: the playground waits until it pauses or ends (it would share the device with "
                 "it). Paused, its checkpoints can be loaded here.")


class Transcript(QTextBrowser):
    """One side's conversation, drawn from its messages; the reply being streamed is drawn last."""

    def __init__(self, side: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(f"{side}Transcript")
        self.side = side
        self.messages: list[dict[str, str]] = []
        self.notes: dict[int, str] = {}  # message index -> how the reply ended
        self.streaming: str | None = None
        self.setOpenLinks(False)

    def reset(self) -> None:
        self.messages, self.notes, self.streaming = [], {}, None
        self._render()

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        self.streaming = ""
        self._render()

    def add_chunk(self, text: str) -> None:
        self.streaming = (self.streaming or "") + text
        self._render()

    def finish(self, reply) -> None:
        """The reply ended: keep the clean text (stop tokens removed) and say how it ended."""
        self.messages.append({"role": "assistant", "content": reply.text})
        how = "stopped" if reply.cancelled else "ended by itself" if reply.stopped else "hit the token limit"
        self.notes[len(self.messages) - 1] = f"{reply.new_tokens} token{'' if reply.new_tokens == 1 else 's'} in {reply.seconds:.1f} s, {how}"
        self.streaming = None
        self._render()

    def drop_unanswered(self) -> None:
        """A reply broke off (an error): forget the message it was answering."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()
        self.streaming = None
        self._render()

    def _render(self) -> None:
        parts = []
        for index, message in enumerate(self.messages):
            parts.append(_bubble("You" if message["role"] == "user" else "Model", message["content"], message["role"]))
            if index in self.notes:
                parts.append(f'<p style="color:#64748b;font-size:small;margin:0 0 8px 0;">{self.notes[index]}</p>')
        if self.streaming is not None:
            parts.append(_bubble("Model", self.streaming + " ▍", "assistant"))
        self.setHtml("".join(parts))
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())


def _bubble(who: str, text: str, role: str) -> str:
    color, background = ("#334155", "#eef2f7") if role == "user" else ("#1e3a8a", "#ffffff")
    return (f'<div style="background:{background};margin:4px 0;"><b style="color:{color};">{who}</b>'
            f'<div style="white-space:pre-wrap;color:#0f172a;">{fmt.escape(text) or "&nbsp;"}</div></div>')


class PlaygroundPage(QWidget):
    export_requested = Signal(str, str)  # run folder, adapter label
    error = Signal(str, str, str)  # (title, reason, details)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.output_dir: str | None = None
        self.training = False
        self.controller = ChatController(self)
        self._pending: list[str] = []  # sides whose reply is still to come

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
        for widget in (QLabel("Run"), self.run_combo, QLabel("Adapter"), self.adapter_combo, self.load_button,
                       self.export_button):
            top.addWidget(widget)
        top.addWidget(self.status, 1)

        # ---- chat ----
        self.system = QLineEdit()
        self.system.setObjectName("systemPrompt")
        self.system.setPlaceholderText("system prompt (optional; the run's data.system_prompt when it has one)")
        self.temperature = QDoubleSpinBox()
        self.temperature.setObjectName("temperature")
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setSpecialValueText("0 (greedy)")
        self.temperature.setToolTip("0 picks the most likely token every time (the same reply each time)")
        self.top_p = QDoubleSpinBox()
        self.top_p.setObjectName("topP")
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setValue(1.0)
        self.top_p.setToolTip("Sample only from the most likely tokens that together have this probability")
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setObjectName("maxNewTokens")
        self.max_new_tokens.setRange(1, 8192)
        self.max_new_tokens.setValue(256)
        fit_text_width(self.run_combo, 24)  # a long run name must not widen the window
        self.run_combo.setMinimumWidth(220)
        fit_text_width(self.adapter_combo, 12)
        for widget in (self.run_combo, self.adapter_combo, self.temperature, self.top_p, self.max_new_tokens):
            guard_wheel(widget)  # scrolling the page must not change a setting it passes over
        self.system.setMinimumWidth(120)
        self.compare = QCheckBox("Base model beside it")
        self.compare.setObjectName("compareBase")
        self.compare.setChecked(True)
        self.compare.setToolTip("Answer each message with the base model too (the same weights with the adapter off)")
        settings = QHBoxLayout()
        settings.addWidget(QLabel("System"))
        settings.addWidget(self.system, 1)
        for label, widget in (("Temperature", self.temperature), ("Top-p", self.top_p), ("Max new tokens", self.max_new_tokens)):
            settings.addWidget(QLabel(label))
            settings.addWidget(widget)
        settings.addWidget(self.compare)

        self.transcripts = {side: Transcript(side) for side in SIDES}
        self.side_titles = {side: QLabel(SIDE_TITLES[side]) for side in SIDES}
        panes = QSplitter(Qt.Orientation.Horizontal)
        for side in SIDES:
            pane = QWidget()
            column = QVBoxLayout(pane)
            column.setContentsMargins(0, 0, 0, 0)
            self.side_titles[side].setObjectName("paneTitle")
            column.addWidget(self.side_titles[side])
            column.addWidget(self.transcripts[side], 1)
            panes.addWidget(pane)

        self.input = QPlainTextEdit()
        self.input.setObjectName("chatInput")
        self.input.setPlaceholderText("Type a message; Ctrl+Enter sends it")
        self.input.setMaximumHeight(80)
        self.send_button = QPushButton("Send")
        self.send_button.setObjectName("sendButton")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopChatButton")
        self.new_button = QPushButton("New chat")
        self.new_button.setObjectName("newChatButton")
        buttons = QVBoxLayout()
        for button in (self.send_button, self.stop_button, self.new_button):
            buttons.addWidget(button)
        entry = QHBoxLayout()
        entry.addWidget(self.input, 1)
        entry.addLayout(buttons)

        chat = QWidget()
        chat_layout = QVBoxLayout(chat)
        chat_layout.addLayout(settings)
        chat_layout.addWidget(panes, 1)
        chat_layout.addLayout(entry)

        self.evaluation = EvaluationPanel()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(chat, "Chat")
        self.tabs.addTab(self.evaluation, "Evaluate")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)

        self.run_combo.currentIndexChanged.connect(self._fill_adapters)
        self.load_button.clicked.connect(self.load_selected)
        self.export_button.clicked.connect(self._export)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.controller.stop)
        self.new_button.clicked.connect(self.new_chat)
        QShortcut(QKeySequence("Ctrl+Return"), self.input, activated=self.send)
        self.evaluation.run_requested.connect(self._evaluate)
        self.evaluation.stop_button.clicked.connect(self.controller.stop)
        c = self.controller
        c.loaded.connect(self._on_loaded)
        c.chunk.connect(lambda side, text: self.transcripts[side].add_chunk(text))
        c.replied.connect(self._on_replied)
        c.progress.connect(self.evaluation.show_progress)
        c.evaluated.connect(self.evaluation.show_result)
        c.failed.connect(self._on_failed)
        c.busy_changed.connect(lambda _busy: self._update())
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
        for run in list_runs(self.output_dir) if self.output_dir else []:
            adapters = available_adapters(run.path)
            if adapters:
                self.run_combo.addItem(f"{run.name} · {Path(run.model).name} · {run.status}", (str(run.path), adapters))
        self.run_combo.blockSignals(False)
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
        if not self.system.text() and ref.config.data.system_prompt:
            self.system.setText(ref.config.data.system_prompt)
        self.side_titles["tuned"].setText(f"Tuned: {ref.name}")
        self.evaluation.set_run(ref)
        self._update()

    # ---- chat ----
    def send(self, text: str | None = None) -> bool:
        from qlora_studio.core.model.generation import Sampling

        text = (text if isinstance(text, str) else self.input.toPlainText()).strip()
        if not text or self.controller.busy or self.controller.ref is None:
            return False
        sides = ["tuned", "base"] if self.compare.isChecked() else ["tuned"]
        system = self.system.text().strip()
        request = []
        for side in sides:
            transcript = self.transcripts[side]
            transcript.add_user(text)
            request.append((side, ([{"role": "system", "content": system}] if system else []) + list(transcript.messages)))
        sampling = Sampling(self.max_new_tokens.value(), self.temperature.value(), self.top_p.value())
        self._pending = list(sides)
        self.input.clear()
        # Typing goes on in the message box: the Send button is about to be disabled, and Qt would hand its
        # focus to the next widget in the chain (the toolbar's step box).
        self.input.setFocus()
        return self.controller.chat(ChatRequest(request, sampling))

    def _on_replied(self, side: str, reply) -> None:
        self.transcripts[side].finish(reply)
        if side in self._pending:
            self._pending.remove(side)

    def new_chat(self) -> None:
        for transcript in self.transcripts.values():
            transcript.reset()

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
        for side in self._pending:  # the replies that broke off
            self.transcripts[side].drop_unanswered()
        self._pending = []
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
        for widget in (self.send_button, self.new_button):
            widget.setEnabled(loaded and not busy and not self.training)
        self.stop_button.setEnabled(busy)
        self.evaluation.set_enabled(loaded and not self.training, busy)
        tip = TRAINING_NOTE if self.training else ""
        for widget in (self.load_button, self.send_button, self.export_button):
            widget.setToolTip(tip)

    @property
    def busy(self) -> bool:
        return self.controller.busy

    def shutdown(self) -> None:
        self.controller.shutdown()
