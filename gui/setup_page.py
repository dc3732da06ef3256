"""The setup page: pickers and toggles that edit one `RunConfig`, with the memory panel and the
dataset X-ray beside them.

Every widget is bound to one dotted config key (`Binding`): an edit becomes
`config.with_overrides({key: value})`, so core's validation is the only validation, and
`set_config` (presets, loaded files, "Make it fit") writes every widget back. Tooltips are the
config's own field docs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.core.config import DATA_FORMATS, TARGET_MODULE_GROUPS, ConfigError, RunConfig, field_help, load_config
from qlora_studio.gui import fmt
from qlora_studio.gui.memory_panel import MemoryPanel
from qlora_studio.gui.settings import Settings
from qlora_studio.gui.workers import TaskRunner
from qlora_studio.gui.xray import DataXRay

MODEL_INFO_DEBOUNCE_MS = 400
CHAT_TEMPLATES = ("auto", "chatml", "llama3", "llama2", "mistral", "gemma", "phi3", "zephyr", "alpaca")
DATA_FILTER = "Datasets (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)"


def _model_info(name: str, trust_remote_code: bool):
    from qlora_studio.core.model_info import model_info

    return model_info(name, trust_remote_code)


def _cached_models() -> list[str]:
    from qlora_studio.core.model_info import cached_hub_models

    return cached_hub_models()


# ---- widgets ----------------------------------------------------------------------------------

class ChoiceButtons(QWidget):
    """Radio buttons for one choice; `buttons[value]` for tests and keyboard users alike."""

    changed = Signal()

    def __init__(self, options: list[tuple[str, str]], parent: QWidget | None = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.group = QButtonGroup(self)
        self.buttons: dict[str, QRadioButton] = {}
        for value, label in options:
            button = QRadioButton(label)
            button.setObjectName(f"choice-{value}")
            self.group.addButton(button)
            self.buttons[value] = button
            layout.addWidget(button)
        layout.addStretch(1)
        self.group.buttonToggled.connect(self._toggled)

    def _toggled(self, button, checked: bool) -> None:
        if checked:
            self.changed.emit()

    def value(self) -> str | None:
        return next((v for v, b in self.buttons.items() if b.isChecked()), None)

    def setValue(self, value: str) -> None:  # noqa: N802 - Qt naming, like the widgets it sits with
        if value in self.buttons:
            self.buttons[value].setChecked(True)

    def setToolTip(self, text: str) -> None:  # noqa: N802
        super().setToolTip(text)
        for button in self.buttons.values():
            button.setToolTip(text)


class SciSpinBox(QDoubleSpinBox):
    """A positive float shown as 2e-04; the arrows double or halve it (learning rates)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(1e-9, 10.0)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt's name
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"

    def valueFromText(self, text: str) -> float:  # noqa: N802
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        try:
            value = float(text)
        except ValueError:
            return QValidator.State.Intermediate, text, pos
        ok = self.minimum() <= value <= self.maximum() and math.isfinite(value)
        return (QValidator.State.Acceptable if ok else QValidator.State.Intermediate), text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802
        self.setValue(self.value() * 2.0**steps)


@dataclass
class Binding:
    key: str
    widget: QWidget
    get: Callable[[], Any]
    put: Callable[[Any], None]


def _spin(lo: int, hi: int, none_text: str | None = None) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(0 if none_text else lo, hi)
    if none_text:
        spin.setSpecialValueText(none_text)
    spin.setKeyboardTracking(False)
    spin.setAccelerated(True)
    return spin


def _dspin(lo: float, hi: float, step: float, decimals: int) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setDecimals(decimals)
    spin.setKeyboardTracking(False)
    return spin


def _combo(values: tuple[str, ...] | list[str], editable: bool = False) -> QComboBox:
    combo = QComboBox()
    combo.addItems(list(values))
    combo.setEditable(editable)
    if editable:
        combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    return combo


# ---- the page ---------------------------------------------------------------------------------

class SetupPage(QWidget):
    config_changed = Signal(object)  # the new RunConfig
    error = Signal(str, str, str)  # (title, reason, details): the window shows a dialog

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.bindings: dict[str, Binding] = {}
        self.config = self._initial_config()
        self._loading = False
        self._problems: dict[str, str] = {}

        self.memory = MemoryPanel()
        self.xray = DataXRay()
        self.memory.fitted.connect(self._on_fitted)
        self.xray.report_ready.connect(lambda report: self.memory.set_longest_tokens(report.token_lengths.get("max")))
        self.xray.report_failed.connect(lambda _reason: self.memory.set_longest_tokens(None))

        left = QWidget()
        left.setObjectName("setupForm")
        form = QVBoxLayout(left)
        form.setContentsMargins(4, 4, 8, 4)
        form.setSpacing(8)
        form.addLayout(self._build_config_row())
        form.addWidget(self._build_model_group())
        form.addWidget(self._build_data_group())
        form.addWidget(self._build_quant_group())
        form.addWidget(self._build_lora_group())
        form.addWidget(self._build_train_group())
        form.addWidget(self._build_gpus_group())
        form.addWidget(self._build_output_group())
        self.problem_label = QLabel("")
        self.problem_label.setObjectName("problemLabel")
        self.problem_label.setWordWrap(True)
        self.problem_label.hide()
        form.addWidget(self.problem_label)
        form.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(560)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(8, 4, 4, 4)
        right_layout.addWidget(self.memory)
        right_layout.addWidget(self.xray, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.splitter)

        self._model_debounce = QTimer(self)
        self._model_debounce.setSingleShot(True)
        self._model_debounce.setInterval(MODEL_INFO_DEBOUNCE_MS)
        self._model_debounce.timeout.connect(self._request_model_info)
        self.model_info_runner = TaskRunner(_model_info, self)
        self.model_info_runner.result.connect(self._on_model_info)
        self.model_info_runner.error.connect(self._on_model_info_error)
        self.cache_runner = TaskRunner(_cached_models, self)
        self.cache_runner.result.connect(self._on_cached_models)
        self.cache_runner.request()
        self._info_for: str | None = None

        self.set_config(self.config)

    # ---- initial state ----
    def _initial_config(self) -> RunConfig:
        """The demo preset (Start works at once), with the user's last model, data and output folder."""
        from qlora_studio.resources import PRESETS

        config = load_config(PRESETS / "demo.yaml")
        overrides: dict[str, Any] = {"output_dir": self.settings.output_dir()}
        if self.settings.get("setup/model"):
            overrides["model.name_or_path"] = self.settings.get("setup/model")
        if self.settings.get("setup/data"):
            overrides["data.path"] = self.settings.get("setup/data")
        try:
            return config.with_overrides(overrides, source="saved window state")
        except ConfigError:
            return config.with_overrides({"output_dir": self.settings.output_dir()})

    # ---- building ----
    def bind(self, key: str, widget: QWidget, label: QLabel | None = None) -> QWidget:
        """Bind `widget` to config `key`: its edits update the config, set_config updates it."""
        get, put, signal = self._accessors(key, widget)
        self.bindings[key] = Binding(key, widget, get, put)
        help_text = field_help(key)
        widget.setToolTip(help_text)
        if label is not None:
            label.setToolTip(help_text)
        widget.setObjectName(key)
        signal.connect(lambda *_: self._edited(key))
        return widget

    def _accessors(self, key: str, widget: QWidget):
        if isinstance(widget, ChoiceButtons):
            return widget.value, widget.setValue, widget.changed
        if isinstance(widget, QCheckBox):
            return widget.isChecked, lambda v: widget.setChecked(bool(v)), widget.toggled
        if isinstance(widget, QSpinBox):
            optional = bool(widget.specialValueText())
            return ((lambda: widget.value() or None) if optional else widget.value,
                    lambda v: widget.setValue(0 if v is None else int(v)), widget.valueChanged)
        if isinstance(widget, QDoubleSpinBox):
            return widget.value, lambda v: widget.setValue(float(v)), widget.valueChanged
        if isinstance(widget, QComboBox):
            if key == "lora.target_modules":
                def get_targets() -> Any:
                    text = widget.currentText().strip()
                    if text in TARGET_MODULE_GROUPS:
                        return text
                    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]

                def put_targets(value: Any) -> None:
                    widget.setCurrentText(value if isinstance(value, str) else ", ".join(value))

                return get_targets, put_targets, widget.currentTextChanged
            if widget.isEditable():
                return (lambda: widget.currentText().strip()), (lambda v: widget.setCurrentText(str(v or ""))), \
                    widget.currentTextChanged
            return widget.currentText, lambda v: widget.setCurrentText(str(v)), widget.currentTextChanged
        if isinstance(widget, QLineEdit) and key == "distributed.gpus":
            def get_gpus() -> Any:
                parts = [p.strip() for p in widget.text().replace(";", ",").split(",") if p.strip()]
                return [int(p) if p.isdigit() else p for p in parts] or None  # core names a bad entry

            return get_gpus, lambda v: widget.setText(", ".join(map(str, v or []))), widget.textChanged
        if isinstance(widget, QLineEdit):
            optional = key in ("run_name", "data.system_prompt", "data.validation_path")
            return ((lambda: widget.text().strip() or None) if optional else (lambda: widget.text().strip()),
                    lambda v: widget.setText("" if v is None else str(v)), widget.textChanged)
        raise TypeError(f"cannot bind {type(widget).__name__}")

    def _grid(self, rows: list[tuple[str, str, QWidget]], columns: int = 2) -> QGridLayout:
        """Label/widget pairs laid out in `columns` columns."""
        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(6)
        for i, (key, text, widget) in enumerate(rows):
            label = QLabel(text)
            self.bind(key, widget, label)
            r, c = divmod(i, columns)
            grid.addWidget(label, r, c * 2)
            grid.addWidget(widget, r, c * 2 + 1)
        for c in range(columns):
            grid.setColumnStretch(c * 2 + 1, 1)
        return grid

    def _build_config_row(self) -> QHBoxLayout:
        from qlora_studio.resources import preset_paths

        row = QHBoxLayout()
        row.addWidget(QLabel("Preset"))
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("presetCombo")
        self.preset_combo.addItems(list(preset_paths()))
        self.preset_combo.setToolTip("Load a bundled starting point (the output folder stays yours)")
        self.preset_combo.activated.connect(lambda _: self.apply_preset(self.preset_combo.currentText()))
        row.addWidget(self.preset_combo, 1)
        self.load_button = QPushButton("Load config…")
        self.load_button.setObjectName("loadConfigButton")
        self.load_button.clicked.connect(self._browse_load)
        self.save_button = QPushButton("Save config…")
        self.save_button.setObjectName("saveConfigButton")
        self.save_button.clicked.connect(self._browse_save)
        row.addWidget(self.load_button)
        row.addWidget(self.save_button)
        return row

    def _build_model_group(self) -> QGroupBox:
        box = QGroupBox("Model")
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.model_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.model_combo.lineEdit().setPlaceholderText("Hub id (org/name), a model folder, or a .gguf file")
        # The combo hands its own item list (the models in the Hub cache) to the completer.
        self.model_completer = QCompleter(self)
        self.model_completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.model_completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.model_combo.setCompleter(self.model_completer)
        self.bind("model.name_or_path", self.model_combo)
        folder = QPushButton("Folder…")
        folder.setObjectName("modelFolderButton")
        folder.setToolTip("A local model folder (with config.json)")
        folder.clicked.connect(self._browse_model_folder)
        gguf = QPushButton("GGUF…")
        gguf.setObjectName("modelGgufButton")
        gguf.setToolTip("A .gguf file: converted once to a model folder in the cache")
        gguf.clicked.connect(self._browse_gguf)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(folder)
        row.addWidget(gguf)
        self.model_info_label = QLabel("")
        self.model_info_label.setObjectName("modelInfo")
        self.model_info_label.setWordWrap(True)
        self.trust_check = QCheckBox("Trust remote code")
        self.bind("model.trust_remote_code", self.trust_check)
        layout = QVBoxLayout(box)
        layout.addLayout(row)
        info_row = QHBoxLayout()
        info_row.addWidget(self.model_info_label, 1)
        info_row.addWidget(self.trust_check)
        layout.addLayout(info_row)
        return box

    def _build_data_group(self) -> QGroupBox:
        from qlora_studio.resources import sample_names

        box = QGroupBox("Dataset")
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("A file, a folder, a Hub dataset id (org/name) or sample:<name>")
        samples = [f"sample:{name}" for name in sample_names()]
        completer = QCompleter(samples, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.data_edit.setCompleter(completer)
        self.bind("data.path", self.data_edit)
        file_button = QPushButton("File…")
        file_button.setObjectName("dataFileButton")
        file_button.clicked.connect(self._browse_data_file)
        folder_button = QPushButton("Folder…")
        folder_button.setObjectName("dataFolderButton")
        folder_button.setToolTip("A folder of data files, or a datasets save_to_disk folder")
        folder_button.clicked.connect(self._browse_data_folder)
        row = QHBoxLayout()
        row.addWidget(self.data_edit, 1)
        row.addWidget(file_button)
        row.addWidget(folder_button)
        grid = self._grid([
            ("data.format", "Format", _combo(DATA_FORMATS)),
            ("data.max_length", "Max length", _spin(8, 1_048_576)),
            ("data.chat_template", "Template", _combo(CHAT_TEMPLATES)),
            ("data.validation_split", "Validation", _dspin(0.0, 0.99, 0.01, 3)),
            ("data.train_on", "Loss on", _combo(("assistant", "all"))),
            ("data.overlength", "Too long", _combo(("truncate", "drop"))),
        ])
        self.skip_bad = QCheckBox("Skip bad rows")
        self.bind("data.skip_bad_rows", self.skip_bad)
        layout = QVBoxLayout(box)
        layout.addLayout(row)
        layout.addLayout(grid)
        layout.addWidget(self.skip_bad)
        return box

    def _build_quant_group(self) -> QGroupBox:
        box = QGroupBox("Quantization")
        self.mode_buttons = ChoiceButtons([("4bit", "4-bit (QLoRA)"), ("8bit", "8-bit"), ("none", "None (16-bit)")])
        self.type_buttons = ChoiceButtons([("nf4", "NF4"), ("fp4", "FP4")])
        self.double_quant = QCheckBox("Double quantization")
        self.compute_combo = _combo(("auto", "bfloat16", "float16", "float32"))
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        for key, text, widget in (("quantization.mode", "Weights", self.mode_buttons),
                                  ("quantization.quant_type", "4-bit type", self.type_buttons)):
            label = QLabel(text)
            self.bind(key, widget, label)
            form.addRow(label, widget)
        row = QHBoxLayout()
        self.bind("quantization.double_quant", self.double_quant)
        compute_label = QLabel("Compute dtype")
        self.bind("quantization.compute_dtype", self.compute_combo, compute_label)
        row.addWidget(self.double_quant)
        row.addStretch(1)
        row.addWidget(compute_label)
        row.addWidget(self.compute_combo)
        layout = QVBoxLayout(box)
        layout.addLayout(form)
        layout.addLayout(row)
        return box

    def _build_lora_group(self) -> QGroupBox:
        box = QGroupBox("LoRA")
        targets = _combo(TARGET_MODULE_GROUPS, editable=True)
        targets.lineEdit().setPlaceholderText("all-linear, or q_proj, v_proj")
        grid = self._grid([
            ("lora.r", "Rank r", _spin(1, 4096)),
            ("lora.alpha", "Alpha", _dspin(0.01, 100_000, 1, 2)),
            ("lora.dropout", "Dropout", _dspin(0.0, 0.99, 0.01, 3)),
            ("lora.target_modules", "Targets", targets),
        ])
        checks = QHBoxLayout()
        for key, text in (("lora.use_dora", "DoRA"), ("lora.use_rslora", "rsLoRA")):
            check = QCheckBox(text)
            self.bind(key, check)
            checks.addWidget(check)
        checks.addStretch(1)
        layout = QVBoxLayout(box)
        layout.addLayout(grid)
        layout.addLayout(checks)
        return box

    def _build_train_group(self) -> QGroupBox:
        box = QGroupBox("Training")
        grid = self._grid([
            ("train.epochs", "Epochs", _dspin(0.01, 10_000, 1, 2)),
            ("train.max_steps", "Max steps", _spin(1, 10_000_000, none_text="from epochs")),
            ("train.micro_batch_size", "Micro-batch", _spin(1, 4096)),
            ("train.grad_accum", "Grad accum", _spin(1, 4096)),
            ("train.learning_rate", "Learning rate", SciSpinBox()),
            ("train.lr_scheduler", "Schedule", _combo(("cosine", "linear", "constant", "constant_with_warmup"))),
            ("train.warmup_ratio", "Warmup", _dspin(0.0, 0.99, 0.01, 3)),
            ("train.optimizer", "Optimizer", _combo(("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"))),
            ("train.save_every_steps", "Save every", _spin(1, 10_000_000)),
            ("train.eval_every_steps", "Eval every", _spin(1, 10_000_000, none_text="at saves")),
            ("train.device", "Device", _combo(("auto", "cuda", "cpu"))),
            ("train.seed", "Seed", _spin(0, 2_147_483_647)),
            ("train.keep_checkpoints", "Keep", _spin(1, 100_000, none_text="all checkpoints")),
            ("train.liger_kernels", "Liger kernels", _combo(("auto", "on", "off"))),
        ])
        self.batch_label = QLabel("")
        self.batch_label.setObjectName("effectiveBatch")
        checks = QHBoxLayout()
        check = QCheckBox("Gradient checkpointing")
        self.bind("train.gradient_checkpointing", check)
        checks.addWidget(check)
        checks.addStretch(1)
        checks.addWidget(self.batch_label)
        layout = QVBoxLayout(box)
        layout.addLayout(grid)
        layout.addLayout(checks)
        return box

    def _build_gpus_group(self) -> QGroupBox:
        """Several GPUs: one process each (data-parallel), or the model sharded across them (FSDP)."""
        box = QGroupBox("GPUs")
        gpus = QLineEdit()
        gpus.setPlaceholderText("the first N")
        grid = self._grid([
            ("distributed.num_processes", "Processes", _spin(1, 64)),
            ("distributed.strategy", "Strategy", _combo(("ddp", "fsdp"))),
            ("distributed.gpus", "GPU indices", gpus),
        ])
        note = QLabel("One process per GPU. Without a GPU, processes share the CPU (gloo backend).")
        note.setObjectName("hint")
        note.setWordWrap(True)
        layout = QVBoxLayout(box)
        layout.addLayout(grid)
        layout.addWidget(note)
        return box

    def _build_output_group(self) -> QGroupBox:
        box = QGroupBox("Output")
        self.output_edit = QLineEdit()
        self.bind("output_dir", self.output_edit)
        browse = QPushButton("Browse…")
        browse.setObjectName("outputBrowseButton")
        browse.clicked.connect(self._browse_output)
        self.run_name_edit = QLineEdit()
        self.run_name_edit.setPlaceholderText("automatic: <date>-<time>-<model>")
        self.bind("run_name", self.run_name_edit)
        form = QFormLayout(box)
        row = QHBoxLayout()
        row.addWidget(self.output_edit, 1)
        row.addWidget(browse)
        form.addRow(QLabel("Runs folder"), row)
        form.addRow(QLabel("Run name"), self.run_name_edit)
        return box

    # ---- config in and out ----
    def widget(self, key: str) -> QWidget:
        return self.bindings[key].widget

    def _value(self, config: RunConfig, key: str) -> Any:
        node: Any = config
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def set_config(self, config: RunConfig) -> None:
        """Show `config` in every widget (presets, loaded files, make-it-fit) and announce it."""
        self._loading = True
        try:
            for key, binding in self.bindings.items():
                binding.widget.blockSignals(True)
                try:
                    binding.put(self._value(config, key))
                finally:
                    binding.widget.blockSignals(False)
        finally:
            self._loading = False
        self._problems.clear()
        self._show_problems()
        self._apply(config)

    def _edited(self, key: str) -> None:
        if self._loading:
            return
        value = self.bindings[key].get()
        try:
            config = self.config.with_overrides({key: value}, source="setting")
        except ConfigError as exc:
            self._problems[key] = str(exc).removeprefix("setting: ")
            self._show_problems()
            return
        self._problems.pop(key, None)
        self._show_problems()
        if key == "output_dir":
            self.settings.set("setup/output_dir", value)
        self._apply(config)

    def _show_problems(self) -> None:
        for key, binding in self.bindings.items():
            binding.widget.setProperty("invalid", key in self._problems)
            binding.widget.style().unpolish(binding.widget)
            binding.widget.style().polish(binding.widget)
        if self._problems:
            self.problem_label.setText("⚠ " + "\n⚠ ".join(self._problems.values()))
            self.problem_label.show()
        else:
            self.problem_label.hide()

    @property
    def valid(self) -> bool:
        """False while a widget holds a value core rejects (the config keeps the last good one)."""
        return not self._problems

    def _apply(self, config: RunConfig) -> None:
        previous = self.config
        self.config = config
        q = config.quantization
        self.type_buttons.setEnabled(q.mode == "4bit")
        self.double_quant.setEnabled(q.mode == "4bit")
        self.batch_label.setText(f"effective batch {config.effective_batch_size}")
        self.settings.set("setup/model", config.model.name_or_path)
        self.settings.set("setup/data", config.data.path)
        if previous is None or previous.model != config.model or self._info_for is None:
            self._model_debounce.start()
        self.memory.set_config(config)
        self.xray.set_config(config)
        self.config_changed.emit(config)

    def apply_preset(self, name: str) -> None:
        from qlora_studio.resources import preset_paths

        path = preset_paths()[name]
        try:
            config = load_config(path).with_overrides({"output_dir": self.settings.output_dir()})
        except ConfigError as exc:
            self.error.emit("Preset", str(exc), "")
            return
        index = self.preset_combo.findText(name)
        if index >= 0:
            self.preset_combo.setCurrentIndex(index)
        self.set_config(config)

    def load_config_file(self, path: str | Path) -> bool:
        from qlora_studio.core.config import absolute_paths

        path = Path(path)
        try:
            config = absolute_paths(load_config(path), path.parent)  # the window has no working folder
        except ConfigError as exc:
            self.error.emit("Load config", str(exc), "")
            return False
        self.settings.set("setup/config_folder", str(path.parent))
        self.set_config(config)
        if Path(config.output_dir) != Path(self.settings.output_dir()):
            self.settings.set("setup/output_dir", config.output_dir)
        return True

    def save_config_file(self, path: str | Path) -> bool:
        path = Path(path)
        try:
            self.config.save(path)
        except OSError as exc:
            self.error.emit("Save config", f"{path}: {exc.strerror or exc}", "")
            return False
        self.settings.set("setup/config_folder", str(path.parent))
        return True

    @Slot(object, str)
    def _on_fitted(self, config: RunConfig, message: str) -> None:
        self.set_config(config)

    # ---- model info ----
    def _request_model_info(self) -> None:
        name = self.config.model.name_or_path.strip()
        if not name:
            self.model_info_label.setText("")
            return
        self._info_for = name
        self.model_info_label.setText("<span style='color:#64748b'>Reading config.json…</span>")
        self.model_info_runner.request(name, self.config.model.trust_remote_code, tag=name)

    @Slot(object, object)
    def _on_model_info(self, name: str, info) -> None:
        if name != self.config.model.name_or_path.strip():
            return
        ctx = f"{info.context_length:,}" if info.context_length else "?"
        self.model_info_label.setText(
            f"<b>{fmt.escape(info.architecture)}</b> · {fmt.params(info.params)} parameters · "
            f"{info.layers} layers · context {ctx} tokens")
        self.model_info_label.setProperty("info", info)

    @Slot(object, object)
    def _on_model_info_error(self, name: str, info: dict) -> None:
        if name != self.config.model.name_or_path.strip():
            return
        self.model_info_label.setText(f"<span style='color:#b91c1c'>{fmt.escape(info['reason'])}</span>")

    @Slot(object, object)
    def _on_cached_models(self, _tag, models: list[str]) -> None:
        from qlora_studio.core.config import DEMO_MODEL_ID

        current = self.model_combo.currentText()
        names = sorted(set(models) | {DEMO_MODEL_ID})
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self.model_combo.setCurrentText(current)
        self.model_combo.blockSignals(False)

    # ---- file dialogs ----
    def _start_folder(self) -> str:
        return self.settings.get("setup/config_folder") or str(Path.home())

    def _browse_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder", self._start_folder())
        if folder:
            self.model_combo.setCurrentText(folder)

    def _browse_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF model", self._start_folder(), "GGUF (*.gguf)")
        if path:
            self.model_combo.setCurrentText(path)

    def _browse_data_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset file", self._start_folder(), DATA_FILTER)
        if path:
            self.data_edit.setText(path)

    def _browse_data_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder", self._start_folder())
        if folder:
            self.data_edit.setText(folder)

    def _browse_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", self.config.output_dir)
        if folder:
            self.output_edit.setText(folder)

    def _browse_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load config", self._start_folder(), "Config (*.yaml *.yml)")
        if path:
            self.load_config_file(path)

    def _browse_save(self) -> None:
        start = str(Path(self._start_folder()) / "qlora-studio.yaml")
        path, _ = QFileDialog.getSaveFileName(self, "Save config", start, "Config (*.yaml *.yml)")
        if path:
            self.save_config_file(path)

    def shutdown(self) -> None:
        self._model_debounce.stop()
        for runner in (self.model_info_runner, self.cache_runner):
            runner.shutdown()
        self.memory.shutdown()
        self.xray.shutdown()
