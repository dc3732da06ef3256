"""A horizontal bar of (label, bytes) parts against a budget marker (the memory panel's picture)."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

PART_COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#db2777", "#94a3b8"]
GIB = 1024**3


class StackedBar(QWidget):
    """Horizontal bar of (label, bytes) parts with a budget marker."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.parts: list[tuple[str, int]] = []
        self.budget_bytes: float | None = None
        self.setMinimumHeight(46)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(400, 46)

    def set_parts(self, parts: list[tuple[str, int]], budget_bytes: float | None) -> None:
        self.parts = list(parts)
        self.budget_bytes = budget_bytes
        self.update()

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(1, 14, -1, -6)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("#e2e8f0"))
        painter.drawRoundedRect(rect, 4, 4)
        scale_max = max(self.total, self.budget_bytes or 0) * 1.04 or 1
        x = rect.left()
        painter.save()
        clip = QRectF(rect)
        painter.setClipRect(clip)
        for (_, nbytes), color in zip(self.parts, PART_COLORS):
            width = rect.width() * nbytes / scale_max
            painter.setBrush(QColor(color))
            painter.drawRect(QRectF(x, rect.top(), width, rect.height()))
            x += width
        painter.restore()
        if self.budget_bytes:
            bx = rect.left() + rect.width() * self.budget_bytes / scale_max
            over = self.total > self.budget_bytes
            pen = QPen(QColor("#dc2626" if over else "#0f172a"), 2)
            painter.setPen(pen)
            painter.drawLine(int(bx), int(rect.top() - 4), int(bx), int(rect.bottom() + 3))
            text = f"budget {self.budget_bytes / GIB:g} GB"
            metrics = painter.fontMetrics()
            tw = metrics.horizontalAdvance(text)
            tx = min(max(bx - tw / 2, 0), self.width() - tw)
            painter.drawText(int(tx), int(rect.top() - 4), text)
        painter.end()
