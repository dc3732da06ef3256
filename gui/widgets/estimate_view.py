"""The picture of one memory estimate: its parts as a stacked bar against the budget, a legend, the
total with its verdict, what it assumes and what double quantization saves. It only draws; the
memory panel decides when an estimate is due and which budget it is held against."""

from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from qlora_studio.gui import fmt
from qlora_studio.gui.widgets.stacked_bar import GIB, PART_COLORS, StackedBar


class EstimateView(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.bar = StackedBar()
        self.total_label = QLabel("Estimating…")
        self.total_label.setObjectName("memoryTotal")
        self.total_label.setWordWrap(True)
        self.assumes_label = QLabel("")
        self.assumes_label.setObjectName("memoryAssumes")
        self.assumes_label.setWordWrap(True)
        self.dq_label = QLabel("")
        self.dq_label.setObjectName("dqSaving")
        self.dq_label.setWordWrap(True)
        self.dq_label.setToolTip("Double quantization stores the 4-bit blocks' scales in 8 bits, "
                                 "with a second-level scale")
        self.legend = QGridLayout()
        self.legend.setHorizontalSpacing(14)
        self.legend.setVerticalSpacing(2)
        self._legend_labels: list[QLabel] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addLayout(self.legend)
        layout.addWidget(self.total_label)
        layout.addWidget(self.assumes_label)
        layout.addWidget(self.dq_label)

    def show_failure(self, reason: str) -> None:
        self.bar.set_parts([], None)
        self._set_legend([])
        self.total_label.setText(f"<span style='color:#b91c1c'>No estimate: {fmt.escape(reason)}</span>")
        self.dq_label.setText("")

    def _set_legend(self, parts: list[tuple[str, int]]) -> None:
        for label in self._legend_labels:
            self.legend.removeWidget(label)
            label.deleteLater()
        self._legend_labels = []
        for i, ((name, nbytes), color) in enumerate(zip(parts, PART_COLORS)):
            label = QLabel(f"<span style='color:{color};font-size:13pt'>■</span> {fmt.escape(name)} "
                           f"<b>{fmt.size(nbytes)}</b>")
            label.setWordWrap(True)  # the legend fits a narrow column (1024 px screens) instead of being cut
            self.legend.addWidget(label, i // 2, i % 2)
            self._legend_labels.append(label)

    def show_estimate(self, e, budget: float | None) -> None:
        """`e`: core's Estimate; `budget`: the card's GB it must fit (None: no verdict)."""
        self.bar.set_parts(e.parts(), budget * GIB if budget else None)
        self._set_legend(e.parts())
        total = f"Predicted peak <b>{fmt.size(e.total_bytes)}</b> on the GPU"
        self.total_label.setToolTip(e.headline() + "\n" + "\n".join(e.warnings + e.decisions + e.notes))
        self.assumes_label.setText(f"<span style='color:#64748b'>{fmt.escape(e.includes())}; assumes "
                                   f"{fmt.escape(e.assumptions())}</span>")
        if budget:
            spare = budget * GIB - e.total_bytes
            verdict = (f"<span style='color:#15803d'>fits {budget:g} GB with {fmt.size(spare)} to spare</span>"
                       if spare >= 0 else
                       f"<span style='color:#b91c1c'><b>does not fit</b> {budget:g} GB: {fmt.size(-spare)} over</span>")
            total += f" · {verdict}"
        self.total_label.setText(total)
        saving = e.double_quant_saving_bytes
        if e.mode != "4bit":
            self.dq_label.setText("Double quant applies to 4-bit weights only")
        elif e.double_quant and saving >= 0:
            self.dq_label.setText(f"Double quant saves <b>{saving / 2**20:.1f} MiB</b> of quantization constants")
        elif e.double_quant:
            # its per-weight tables outweigh the saving on very small layers
            self.dq_label.setText(f"Double quant costs <b>{-saving / 2**20:.2f} MiB</b> here: layers this small "
                                  "gain nothing from it")
        elif saving > 0:
            self.dq_label.setText(f"Double quant is off: turning it on would save <b>{saving / 2**20:.1f} MiB</b>")
        else:
            self.dq_label.setText("Double quant is off: it would save nothing on layers this small")
        # What the run does to fit, and what the figure assumes, in plain colour; warning colour only for
        # what needs the user's action.
        self.dq_label.setText(self.dq_label.text() + "".join(
            f"<br><span style='color:#b45309'>{fmt.escape(w)}</span>" for w in e.warnings) + "".join(
            f"<br><span style='color:#64748b'>{fmt.escape(line)}</span>" for line in e.decisions + e.notes))
