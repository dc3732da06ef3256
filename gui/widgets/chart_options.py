"""The monitor's chart options: how much to smooth the training loss, and a log axis for it."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSlider, QWidget


class ChartOptions(QWidget):
    smoothing_changed = Signal(float)  # the EMA weight, 0 (raw) to 0.99

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setObjectName("smoothingSlider")
        self.smoothing.setRange(0, 99)
        self.smoothing.setValue(60)
        self.smoothing.setFixedWidth(160)
        self.smoothing.setToolTip("Exponential moving average of the training loss (0 = raw)")
        self.smoothing_value = QLabel("0.60")
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setObjectName("logScaleCheck")
        self.log_scale.setToolTip("Show the loss on a logarithmic axis")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Loss smoothing"))
        row.addWidget(self.smoothing)
        row.addWidget(self.smoothing_value)
        row.addSpacing(16)
        row.addWidget(self.log_scale)
        row.addStretch(1)
        self.smoothing.valueChanged.connect(self._on_smoothing)

    def set_smoothing(self, weight: float) -> None:
        self.smoothing.setValue(int(round(weight * 100)))

    def _on_smoothing(self, value: int) -> None:
        weight = value / 100
        self.smoothing_value.setText(f"{weight:.2f}")
        self.smoothing_changed.emit(weight)
