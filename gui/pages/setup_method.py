"""The setup form's Method group: the training method (`train.method`) and the settings of the
chosen one only (`train.dpo`, `.orpo`, `.kto`, `.grpo` with its rewards). Editors come from the
schema (`widgets.form`) like every other group's; a python reward runs only after an explicit yes."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QGroupBox, QLabel, QMessageBox, QVBoxLayout, QWidget

from qlora_studio.core.config import RunConfig
from qlora_studio.core.config.methods import METHOD_FORMATS, METHOD_SAMPLES, METHOD_SUMMARIES, METHODS
from qlora_studio.gui.widgets.form import ChoiceButtons, Form
from qlora_studio.gui.widgets.rewards_editor import RewardsEditor, python_functions

METHOD_LABELS = {"sft": "SFT", "dpo": "DPO", "orpo": "ORPO", "kto": "KTO", "grpo": "GRPO"}
# Each method's own keys, in the order users think about them (rewards and the python consent below the grid).
METHOD_KEYS: dict[str, list[tuple[str, str]]] = {
    "sft": [],
    "dpo": [("train.dpo.beta", "Beta"), ("train.dpo.loss_type", "Loss"),
            ("train.dpo.label_smoothing", "Label smoothing"), ("train.dpo.sft_weight", "SFT weight")],
    "orpo": [("train.orpo.beta", "Beta")],
    "kto": [("train.kto.beta", "Beta"), ("train.kto.loss_type", "Loss"),
            ("train.kto.desirable_weight", "Desirable weight"), ("train.kto.undesirable_weight", "Undesirable weight")],
    "grpo": [("train.grpo.num_generations", "Answers / prompt"), ("train.grpo.max_completion_length", "Answer tokens"),
             ("train.grpo.temperature", "Temperature"), ("train.grpo.beta", "KL beta"),
             ("train.grpo.loss_type", "Loss"), ("train.grpo.epsilon", "Clip epsilon")],
}
FINE_STEP = 0.05  # betas and weights live around 0.01-2: the form's default step of 1 would jump past them


class ConsentCheckBox(QCheckBox):
    """A check box that the user ticks only through an explicit yes (`ask`); unticking asks nothing,
    and the config (a loaded file, a preset) sets it without asking."""

    def __init__(self, text: str, ask, parent: QWidget | None = None):
        super().__init__(text, parent)
        self.ask = ask

    def nextCheckState(self) -> None:  # noqa: N802 - Qt's name: a click or the space bar
        if self.isChecked() or self.ask():
            super().nextCheckState()


class MethodBox:
    """The Method group box and what it shows for a config."""

    def __init__(self, form: Form, data_format: QComboBox):
        self.data_format = data_format  # Dataset's format combo: it offers only the formats the method trains on
        self.picker = form.add("train.method", ChoiceButtons.for_key("train.method", METHOD_LABELS))
        for value, button in self.picker.buttons.items():
            button.setToolTip(METHOD_SUMMARIES[value])
        self.summary = QLabel("")
        self.summary.setObjectName("methodSummary")
        self.summary.setWordWrap(True)
        self.data_path = ""  # the config's data.path: the line under the picker names a bundled sample
        self.sections: dict[str, QWidget] = {}
        for method in METHODS:
            section = QWidget()
            section.setObjectName(f"method-{method}")
            layout = QVBoxLayout(section)
            layout.setContentsMargins(0, 0, 0, 0)
            if METHOD_KEYS[method]:
                layout.addLayout(form.grid(METHOD_KEYS[method]))
            self.sections[method] = section
        for key, _ in (pair for keys in METHOD_KEYS.values() for pair in keys):
            spin = form.bindings[key].widget
            if isinstance(spin, QDoubleSpinBox) and spin.singleStep() >= 1:
                spin.setDecimals(3)
                spin.setSingleStep(FINE_STEP)
        self.rewards: RewardsEditor = form.add("train.grpo.rewards", RewardsEditor())
        self.python_warning = QLabel("")
        self.python_warning.setObjectName("pythonRewardWarning")
        self.python_warning.setWordWrap(True)
        self.python_warning.setTextFormat(Qt.TextFormat.PlainText)  # a file name is not markup
        self.allow_python = form.add("train.grpo.allow_python_rewards",
                                     ConsentCheckBox("Allow Python rewards (runs the files named above)",
                                                     self.ask_python_consent))
        grpo = self.sections["grpo"].layout()
        rewards_label = QLabel("Rewards")
        rewards_label.setToolTip(self.rewards.toolTip())
        for widget in (rewards_label, self.rewards, self.python_warning, self.allow_python):
            grpo.addWidget(widget)
        self.rewards.changed.connect(self._show_python)
        # the picked method's settings show at once, even while core still rejects it (GRPO's
        # num_generations must divide the batch: they are where that is fixed)
        self.picker.changed.connect(lambda: self._show_method(self.picker.value()))

        self.box = QGroupBox("Method")
        self.box.setObjectName("methodBox")
        layout = QVBoxLayout(self.box)
        layout.addWidget(self.picker)
        layout.addWidget(self.summary)
        for section in self.sections.values():
            layout.addWidget(section)

    # ---- what a config shows ----
    def show_config(self, config: RunConfig) -> None:
        self.data_path = config.data.path
        self._show_method(self.picker.value() or config.train.method)  # the picked one, while core still rejects it
        self._offer_formats(config.train.method, config.data.format)
        self._show_python()

    def _show_method(self, method: str) -> None:
        self.summary.setText(f"{METHOD_SUMMARIES[method][0].upper()}{METHOD_SUMMARIES[method][1:]}. "
                             f"Data: {', '.join(METHOD_FORMATS[method])} rows."
                             + (f" Demo data: {self.data_path}." if self.data_path == METHOD_SAMPLES[method] else ""))
        for name, section in self.sections.items():
            section.setVisible(name == method)

    def _offer_formats(self, method: str, current: str) -> None:
        """The format combo lists auto and the formats `method` trains on."""
        combo = self.data_format
        wanted = ["auto", *METHOD_FORMATS[method]]
        combo.blockSignals(True)
        try:
            if [combo.itemText(i) for i in range(combo.count())] != wanted:
                combo.clear()
                combo.addItems(wanted)
            combo.setCurrentText(current)
        finally:
            combo.blockSignals(False)

    @staticmethod
    def implied(key: str, value: Any, config: RunConfig) -> dict[str, Any]:
        """What changes along with an edit of `key`: a new method keeps the data format only where it
        fits, and a bundled sample (the user picked no data of their own) becomes the new method's."""
        implied: dict[str, Any] = {}
        if key != "train.method" or value not in METHOD_SAMPLES:
            return implied
        if config.data.format not in ("auto", *METHOD_FORMATS[value]):
            implied["data.format"] = "auto"
        if config.data.path in METHOD_SAMPLES.values() and config.data.path != METHOD_SAMPLES[value]:
            implied["data.path"] = METHOD_SAMPLES[value]
        return implied

    # ---- python rewards ----
    @staticmethod
    def start_blocker(config: RunConfig) -> str:
        """Why Start must wait: a python reward without the user's yes (core would refuse it)."""
        grpo = config.train.grpo
        if config.train.method == "grpo" and not grpo.allow_python_rewards and any(
                reward.preset == "python" for reward in grpo.rewards):
            return "a python reward runs your own code: tick “Allow Python rewards” under Method, or remove it"
        return ""

    def _show_python(self) -> None:
        functions = python_functions(self.rewards.value())
        allowed = self.allow_python.isChecked()
        if functions:
            state = ("allowed in this config" if allowed
                     else "it runs only once you tick “Allow Python rewards”, and Start waits until then")
            self.python_warning.setText(
                f"⚠ A python reward runs your own code ({', '.join(functions)}) on this computer, with your "
                f"permissions, on every batch of sampled answers: {state}.")
        self.python_warning.setVisible(bool(functions))
        self.allow_python.setVisible(bool(functions) or allowed)

    def ask_python_consent(self) -> bool:
        """An explicit yes before python rewards may run (No is the default button)."""
        functions = ", ".join(python_functions(self.rewards.value())) or "the functions your python rewards name"
        box = QMessageBox(QMessageBox.Icon.Warning, "Allow Python rewards",
                          f"Training will import and call {functions} as Python code, with your permissions, on "
                          "every batch of sampled answers.\n\nAllow it only for files you wrote or trust. Allow "
                          "Python rewards in this config?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self.box)
        box.setObjectName("pythonRewardConsent")
        box.setDefaultButton(QMessageBox.StandardButton.No)
        return box.exec() == QMessageBox.StandardButton.Yes
