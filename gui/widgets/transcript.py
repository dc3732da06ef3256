"""One side of a playground chat: its messages as bubbles, with the reply being streamed drawn last."""

from __future__ import annotations

from PySide6.QtWidgets import QTextBrowser, QWidget

from qlora_studio.gui import fmt


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
