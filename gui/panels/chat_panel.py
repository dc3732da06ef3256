"""The playground's Chat tab: sampling settings, the tuned and base transcripts side by side (with a
run to compare: base · run A · run B), and the message box. It keeps the conversation and turns a
message into a `ChatRequest`; the page hands that to its chat worker and routes the worker's replies
back here."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui.widgets.form import guard_wheel
from qlora_studio.gui.widgets.transcript import Transcript
from qlora_studio.gui.workers.chat import ChatRequest

SIDES = ("tuned", "base", "compared")
SIDE_TITLES = {"tuned": "Tuned (base + adapter)", "base": "Base model (adapter off)", "compared": "Compared run"}
TWO_COLUMNS = ("tuned", "base", "compared")  # the compared pane hidden
THREE_COLUMNS = ("base", "tuned", "compared")  # base · run A · run B


class ChatPanel(QWidget):
    send_requested = Signal()  # Send, or Ctrl+Enter in the message box

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._pending: list[str] = []  # sides whose reply is still to come
        self.comparing = False  # a second run answers too (the third column)
        self._names = {"tuned": ("", ""), "compared": ("", "")}  # (run and adapter, method) over each run's column

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
        for widget in (self.temperature, self.top_p, self.max_new_tokens):
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
        self.panes: dict[str, QWidget] = {}
        self.splitter = panes = QSplitter(Qt.Orientation.Horizontal)
        panes.setChildrenCollapsible(False)
        for side in SIDES:
            pane = self.panes[side] = QWidget()
            column = QVBoxLayout(pane)
            column.setContentsMargins(0, 0, 0, 0)
            title = self.side_titles[side]
            title.setObjectName("paneTitle")
            title.setMinimumWidth(40)  # a long run name is cut short (its tooltip has it all), not the column widened
            column.addWidget(title)
            column.addWidget(self.transcripts[side], 1)
            panes.addWidget(pane)
        self.panes["compared"].hide()

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

        layout = QVBoxLayout(self)
        layout.addLayout(settings)
        layout.addWidget(panes, 1)
        layout.addLayout(entry)

        self.send_button.clicked.connect(self.send_requested)
        QShortcut(QKeySequence("Ctrl+Return"), self.input).activated.connect(self.send_requested)
        self.new_button.clicked.connect(self.new_chat)

    def take_message(self, text: str) -> ChatRequest:
        """`text` joins each answering side's transcript; the request asks for their replies."""
        from qlora_studio.core.model.generation import Sampling

        # the runs first (what Stop would cut short last), then the base
        sides = ["tuned"] + (["compared"] if self.comparing else []) + (["base"] if self.compare.isChecked() else [])
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
        return ChatRequest(request, sampling)

    def add_chunk(self, side: str, text: str) -> None:
        self.transcripts[side].add_chunk(text)

    def finish(self, side: str, reply) -> None:
        self.transcripts[side].finish(reply)
        if side in self._pending:
            self._pending.remove(side)

    def break_off(self) -> None:
        """The replies still to come will not: forget the message they were answering."""
        for side in self._pending:
            self.transcripts[side].drop_unanswered()
        self._pending = []

    def new_chat(self) -> None:
        for transcript in self.transcripts.values():
            transcript.reset()

    def show_loaded(self, name: str, system_prompt: str, method: str = "") -> None:
        """A model was loaded: name it (and its training method) over the tuned side; offer the run's
        system prompt if none is typed."""
        if not self.system.text() and system_prompt:
            self.system.setText(system_prompt)
        self._names["tuned"] = (name, method)
        self._show_titles()

    def set_comparison(self, name: str | None, method: str = "") -> None:
        """Show a third column for the compared run (None: back to tuned and base). The chat starts anew:
        the compared run did not answer the earlier turns, and each column's history is its own. Dropped,
the tuned and base columns keep theirs."""
        if name is not None:
            self.new_chat()
        else:  # tuned and base keep their conversation
            self.transcripts["compared"].reset()
        self.comparing = name is not None
        self._names["compared"] = (name or "", method)
        self._show_titles()
        self.panes["compared"].setVisible(self.comparing)
        for index, side in enumerate(THREE_COLUMNS if self.comparing else TWO_COLUMNS):
            self.splitter.insertWidget(index, self.panes[side])
        self.splitter.setSizes([1000] * len(SIDES))  # equal columns

    def _show_titles(self) -> None:
        titles = {"base": "Base model (adapters off)" if self.comparing else SIDE_TITLES["base"]}
        for side, prefix in (("tuned", "A" if self.comparing else "Tuned"), ("compared", "B")):
            name, method = self._names[side]
            titles[side] = f"{prefix}: {name}{f' · {method}' if method else ''}" if name else SIDE_TITLES[side]
        for side, text in titles.items():
            self.side_titles[side].setText(text)
            self.side_titles[side].setToolTip(text)

    def set_state(self, can_chat: bool, busy: bool) -> None:
        for widget in (self.send_button, self.new_button):
            widget.setEnabled(can_chat)
        self.stop_button.setEnabled(busy)
