"""The memory panel: core's estimate as a stacked bar against a budget, and "Make it fit".

Estimates read config.json and build the model on the meta device (seconds the first time), so
they run off the GUI thread, debounced: a burst of edits costs one estimate.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QComboBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from qlora_studio.gui import fmt
from qlora_studio.gui.widgets.form import fit_text_width, guard_wheel
from qlora_studio.gui.widgets.stacked_bar import GIB, PART_COLORS, StackedBar
from qlora_studio.gui.workers.tasks import DebouncedTask, TaskRunner

DEBOUNCE_MS = 300


def _estimate(config, budget_gb: float | None):
    from qlora_studio.core.planner.plan import estimate_config

    return estimate_config(config, budget_gb)


def _fit(config, budget_gb: float):
    from qlora_studio.core.planner.fit import make_it_fit

    return make_it_fit(config, budget_gb)


class MemoryPanel(QGroupBox):
    estimate_ready = Signal(object)  # the core Estimate, after the bar shows it
    estimate_failed = Signal(str)
    fitted = Signal(object, str)  # (fitted RunConfig, message)
    fit_failed = Signal(str)
    budget_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("GPU memory estimate", parent)
        self.setObjectName("memoryPanel")
        self.config = None
        self.estimate = None
        self._estimated_for = None  # (config, budget) the estimate was made for
        self.detected_gb: float | None = None
        self._gpu_name = ""
        self._wanted: Any = "auto"  # the user's choice, kept while no GPU has been detected yet
        self._message_for: Any = None  # (config, budget) the Make-it-fit message speaks of

        self.budget_combo = guard_wheel(QComboBox())
        self.budget_combo.setObjectName("budgetCombo")
        fit_text_width(self.budget_combo, 12)  # a long GPU name must not widen the window
        self.budget_combo.setToolTip("The card to plan for: the detected GPU, or a common size")
        self.fit_button = QPushButton("Make it fit")
        self.fit_button.setObjectName("fitButton")
        self.fit_button.setToolTip("The fastest settings that fit the budget, keeping the effective batch:\n"
                                   "micro-batch / grad accumulation, gradient checkpointing, optimizer,\n"
                                   "then max length")
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
        self.message = QLabel("")
        self.message.setObjectName("fitMessage")
        self.message.setWordWrap(True)
        self.message.hide()

        top = QHBoxLayout()
        top.addWidget(QLabel("Budget"))
        top.addWidget(self.budget_combo, 1)
        top.addWidget(self.fit_button)
        self.legend = QGridLayout()
        self.legend.setHorizontalSpacing(14)
        self.legend.setVerticalSpacing(2)
        self._legend_labels: list[QLabel] = []
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.bar)
        layout.addLayout(self.legend)
        layout.addWidget(self.total_label)
        layout.addWidget(self.assumes_label)
        layout.addWidget(self.dq_label)
        layout.addWidget(self.message)

        self._fill_budgets()
        self.budget_combo.currentIndexChanged.connect(self._on_budget)
        self.fit_button.clicked.connect(self.make_it_fit)

        self.estimator = DebouncedTask(_estimate, DEBOUNCE_MS, self)
        self.estimator.result.connect(self._on_estimate)
        self.estimator.error.connect(self._on_estimate_error)
        self.fitter = TaskRunner(_fit, self)
        self.fitter.result.connect(self._on_fit)
        self.fitter.error.connect(self._on_fit_error)

    # ---- budget ----
    def _fill_budgets(self, selected: Any = None) -> None:
        from qlora_studio.core.planner.estimate import BUDGETS_GB

        if selected is None:
            selected = self.budget_combo.currentData()
        self.budget_combo.blockSignals(True)
        self.budget_combo.clear()
        if self.detected_gb:
            self.budget_combo.addItem(f"{self._gpu_name} ({self.detected_gb:g} GB)", "auto")
        for gb in BUDGETS_GB:
            self.budget_combo.addItem(f"{gb} GB card", float(gb))
        index = self.budget_combo.findData(selected)
        if index < 0:
            index = 0 if self.detected_gb else self.budget_combo.findData(16.0)
        self.budget_combo.setCurrentIndex(index)
        self.budget_combo.blockSignals(False)

    def set_detected_gpu(self, name: str, total_gb: float | None) -> None:
        self._gpu_name = name
        self.detected_gb = total_gb
        self._fill_budgets(self._wanted)
        self._show()

    def select_budget(self, value: Any) -> None:
        """`auto` (the detected GPU) or a size in GB."""
        if value != "auto":
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = "auto"
        self._wanted = value
        index = self.budget_combo.findData(value)
        if index >= 0:
            self.budget_combo.setCurrentIndex(index)

    @property
    def budget_gb(self) -> float | None:
        data = self.budget_combo.currentData()
        return self.detected_gb if data == "auto" else data

    def _on_budget(self) -> None:
        self._wanted = self.budget_combo.currentData()
        self._forget_stale_message()
        self._show()
        self._request()  # train.offload_checkpoints auto depends on the card
        self.budget_changed.emit(self.budget_combo.currentData())

    # ---- estimate ----
    def set_config(self, config) -> None:
        self.config = config
        self._forget_stale_message()
        self._request()

    def _forget_stale_message(self) -> None:
        """A Make-it-fit answer holds for the config and budget it was asked for (or the config it
        produced); another model, preset, setting or budget makes it untrue."""
        if self._message_for is None or self.config is None:
            return
        configs, budget = self._message_for
        if budget != self.budget_gb or self.config.model_dump() not in configs:
            self._message_for = None
            self.message.hide()
            self.message.clear()

    def _request(self) -> None:
        if self.config is not None:
            self.total_label.setText(self.total_label.text() if self.estimate else "Estimating…")
            self.estimator.schedule(self.config, self.budget_gb, tag=(self.config, self.budget_gb))

    @Slot(object, object)
    def _on_estimate(self, tag, estimate) -> None:
        self.estimate = estimate
        self._estimated_for = tag
        self._show()
        self.estimate_ready.emit(estimate)

    @Slot(object, object)
    def _on_estimate_error(self, config, error) -> None:
        self.estimate = None
        self.bar.set_parts([], None)
        self._set_legend([])
        self.total_label.setText(f"<span style='color:#b91c1c'>No estimate: {fmt.escape(error.reason)}</span>")
        self.dq_label.setText("")
        self.estimate_failed.emit(error.reason)

    def predicted_peak_gb(self, config) -> float | None:
        """The estimate's PyTorch peak (what the VRAM chart measures), when it was made for exactly
        this config; the run's own prediction, made by the same rules, replaces it once training starts."""
        if self.estimate is None or self._estimated_for is None:
            return None
        same = self._estimated_for[0].model_dump() == config.model_dump()
        return round(self.estimate.peak_allocated_bytes / GIB, 3) if same else None

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

    def _show(self) -> None:
        e = self.estimate
        budget = self.budget_gb
        if e is None:
            return
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

    # ---- make it fit ----
    def make_it_fit(self) -> None:
        budget = self.budget_gb
        if self.config is None or not budget:
            return
        self.fit_button.setEnabled(False)
        self.message.setText("Searching for settings that fit…")
        self.message.setStyleSheet("")
        self.message.show()
        self._message_for = ([self.config.model_dump()], budget)
        self.fitter.request(self.config, budget, tag=self.config)

    @Slot(object, object)
    def _on_fit(self, config, result) -> None:
        self.fit_button.setEnabled(True)
        if self._message_for is None or config.model_dump() not in self._message_for[0]:
            return  # the config changed while the search ran: its answer no longer applies
        self.message.setText(result.message)
        if result.config is not None:
            self._message_for[0].append(result.config.model_dump())  # the fitted config is what it speaks of
        if result.config is None:
            self.message.setStyleSheet("color:#b91c1c")
            self.fit_failed.emit(result.message)
            return
        self.message.setStyleSheet("color:#15803d")
        self.fitted.emit(result.config, result.message)

    @Slot(object, object)
    def _on_fit_error(self, config, error) -> None:
        self.fit_button.setEnabled(True)
        if self._message_for is None or config.model_dump() not in self._message_for[0]:
            return
        self.message.setText(f"Make it fit failed: {error.reason}")
        self.message.setStyleSheet("color:#b91c1c")
        self.message.show()
        self.fit_failed.emit(error.reason)

    def shutdown(self) -> None:
        self.estimator.shutdown()
        self.fitter.shutdown()
