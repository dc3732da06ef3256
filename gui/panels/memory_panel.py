"""The memory panel: the budget to plan for, core's estimate against it (drawn by `EstimateView`), and
"Make it fit".

Estimates read config.json and build the model on the meta device (seconds the first time), so
they run off the GUI thread, debounced: a burst of edits costs one estimate.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QComboBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from qlora_studio.gui.widgets.estimate_view import EstimateView
from qlora_studio.gui.widgets.form import fit_text_width, guard_wheel
from qlora_studio.gui.widgets.stacked_bar import GIB
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
        self.view = EstimateView()
        # the view's parts, by the names the window and tests read
        self.bar, self.total_label = self.view.bar, self.view.total_label
        self.assumes_label, self.dq_label = self.view.assumes_label, self.view.dq_label
        self.message = QLabel("")
        self.message.setObjectName("fitMessage")
        self.message.setWordWrap(True)
        self.message.hide()

        top = QHBoxLayout()
        top.addWidget(QLabel("Budget"))
        top.addWidget(self.budget_combo, 1)
        top.addWidget(self.fit_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.view)
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
        self.view.show_failure(error.reason)
        self.estimate_failed.emit(error.reason)

    def predicted_peak_gb(self, config) -> float | None:
        """The estimate's PyTorch peak (what the VRAM chart measures), when it was made for exactly
        this config; the run's own prediction, made by the same rules, replaces it once training starts."""
        if self.estimate is None or self._estimated_for is None:
            return None
        same = self._estimated_for[0].model_dump() == config.model_dump()
        return round(self.estimate.peak_allocated_bytes / GIB, 3) if same else None

    def _show(self) -> None:
        if self.estimate is not None:
            self.view.show_estimate(self.estimate, self.budget_gb)

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
