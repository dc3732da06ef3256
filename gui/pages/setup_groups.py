"""The setup form's groups, each a list of config keys with a label: what the user can set, in
the order they think about it. Editors come from the schema (`widgets.form`); only keys that need
a richer editor than their type implies name one here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.core.config import LORA_TARGET_GROUPS, RunConfig
from qlora_studio.core.config import choices as choices_of
from qlora_studio.core.config.files import default_runs_dir, field_help
from qlora_studio.gui.fmt import escape
from qlora_studio.gui.pages.setup_method import MethodBox
from qlora_studio.gui.widgets.form import CheckChoices, ChoiceButtons, Form, SciSpinBox, guard_wheel
from qlora_studio.gui.widgets.pickers import DataPicker, ModelPicker
from qlora_studio.gui.widgets.probes_editor import ProbesEditor

DATA_KEYS = [
    ("data.format", "Format"), ("data.max_length", "Max length"), ("data.chat_template", "Template"),
    ("data.validation_split", "Validation"), ("data.train_on", "Loss on"), ("data.overlength", "Too long"),
    ("data.packing", "Packing"),
]
LORA_KEYS = [("lora.r", "Rank r"), ("lora.alpha", "Alpha"), ("lora.dropout", "Dropout")]
TRAIN_KEYS = [
    ("train.epochs", "Epochs"), ("train.max_steps", "Max steps", "from epochs"),
    ("train.micro_batch_size", "Micro-batch"), ("train.grad_accum", "Grad accum"),
    ("train.tokens_per_batch", "Tokens/batch", "micro-batch x max length"),
    ("train.learning_rate", "Learning rate", SciSpinBox), ("train.lr_scheduler", "Schedule"),
    ("train.warmup_ratio", "Warmup"), ("train.optimizer", "Optimizer"),
    ("train.save_every_steps", "Save every"), ("train.eval_every_steps", "Eval every", "at saves"),
    ("train.device", "Device"), ("train.seed", "Seed"),
    ("train.keep_checkpoints", "Keep", "all checkpoints"), ("train.liger_kernels", "Liger kernels"),
    ("train.offload_checkpoints", "Offload ckpts"), ("train.tiled_mlp", "Tiled MLP"),
    ("train.chunked_loss", "Chunked loss"),
]
GPU_KEYS = [("distributed.num_processes", "Processes"), ("distributed.strategy", "Strategy"),
            ("distributed.gpus", "GPU indices", QLineEdit)]
# How the radio buttons read; the values themselves come from the schema.
LABELS = {"4bit": "4-bit (QLoRA)", "8bit": "8-bit", "none": "None (16-bit)", "nf4": "NF4", "fp4": "FP4"}


@dataclass
class SetupGroups:
    boxes: list[QGroupBox]
    model_picker: ModelPicker
    method: MethodBox
    dependents: dict[str, QWidget] = field(default_factory=dict)

    def implied(self, key: str, value: Any, config: RunConfig) -> dict[str, Any]:
        """Settings that change along with an edit of `key` (overrides for `config`)."""
        return self.method.implied(key, value, config)

    def start_blocker(self, config: RunConfig) -> str:
        return self.method.start_blocker(config)

    def show_config(self, config: RunConfig) -> None:
        """Editors whose state follows other settings."""
        self.method.show_config(config)
        four_bit = config.quantization.mode == "4bit"
        self.dependents["quantization.quant_type"].setEnabled(four_bit)
        self.dependents["quantization.double_quant"].setEnabled(four_bit)
        self.dependents["quantization.embeddings"].setEnabled(four_bit)
        self.dependents["effective_batch"].setText(f"effective batch {config.effective_batch_size}")
        trusted, note = config.model.trust_remote_code, self.dependents["trust_warning"]
        note.setText(f"⚠ The Python code shipped with <b>{escape(config.model.name_or_path)}</b> (its config.json "
                     "auto_map) will run on this computer with your permissions. Leave this off unless you trust "
                     "that repository; changing the model turns it off." if trusted else "")
        note.setVisible(trusted)


def _rows(rows: list[tuple]) -> list[tuple]:
    """Rows whose third item is a widget class get a fresh instance of it."""
    made = []
    for key, text, *extra in rows:
        if extra and isinstance(extra[0], type):
            extra = [extra[0]()]
        made.append((key, text, *extra))
    return made


def _box(title: str, *parts) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    for part in parts:
        (layout.addLayout if not isinstance(part, QWidget) else layout.addWidget)(part)
    return box


def _row(*widgets, stretch_after: int | None = None) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, widget in enumerate(widgets):
        row.addWidget(widget)
        if stretch_after == i:
            row.addStretch(1)
    if stretch_after is None:
        row.addStretch(1)
    return row


def build_groups(form: Form, start_folder: Callable[[], str]) -> SetupGroups:
    model = ModelPicker(start_folder)
    form.add("model.name_or_path", model.combo)
    trust = form.add("model.trust_remote_code", QCheckBox("Trust remote code"))
    trust_note = QLabel("")
    trust_note.setObjectName("trustWarning")
    trust_note.setWordWrap(True)
    trust_note.hide()
    data = DataPicker(start_folder)
    form.add("data.path", data.edit)
    data_grid = form.grid(DATA_KEYS)
    skip_bad = form.add("data.skip_bad_rows", QCheckBox("Skip bad rows"))
    method = MethodBox(form, form.bindings["data.format"].widget)

    quant_form = QFormLayout()
    mode = form.add("quantization.mode", ChoiceButtons.for_key("quantization.mode", LABELS))
    quant_type = form.add("quantization.quant_type", ChoiceButtons.for_key("quantization.quant_type", LABELS))
    quant_form.addRow(QLabel("Weights"), mode)
    quant_form.addRow(QLabel("4-bit type"), quant_type)
    embeddings = form.add("quantization.embeddings")
    embeddings_label = QLabel("4-bit embeddings")
    embeddings_label.setToolTip(field_help("quantization.embeddings"))
    quant_form.addRow(embeddings_label, embeddings)
    double_quant = form.add("quantization.double_quant", QCheckBox("Double quantization"))
    compute = form.add("quantization.compute_dtype")

    targets = guard_wheel(QComboBox())
    targets.addItems(list(LORA_TARGET_GROUPS))
    targets.setEditable(True)
    targets.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    targets.lineEdit().setPlaceholderText("all-linear, or q_proj, v_proj")
    lora_grid = form.grid(LORA_KEYS + [("lora.target_modules", "Targets", targets)])
    dora = form.add("lora.use_dora", QCheckBox("DoRA"))
    rslora = form.add("lora.use_rslora", QCheckBox("rsLoRA"))

    checkpointing = form.add("train.gradient_checkpointing", QCheckBox("Gradient checkpointing"))
    report_to = form.add("train.report_to", _report_choices())
    batch = QLabel("")
    batch.setObjectName("effectiveBatch")
    note = QLabel("One process per GPU. Without a GPU, processes share the CPU (gloo backend).")
    note.setObjectName("hint")
    note.setWordWrap(True)
    gpu_grid = form.grid(_rows(GPU_KEYS))
    form.bindings["distributed.gpus"].widget.setPlaceholderText("the first N")

    output = QLineEdit()
    output.setPlaceholderText(f"default: {default_runs_dir()}")
    form.add("output_dir", output)
    browse = QPushButton("Browse…")
    browse.setObjectName("outputBrowseButton")
    browse.clicked.connect(lambda: _browse_folder(output, "Runs folder"))
    run_name = QLineEdit()
    run_name.setPlaceholderText("automatic: <date>-<time>-<model>")
    form.add("run_name", run_name)
    output_form = QFormLayout()
    output_row = QHBoxLayout()
    output_row.addWidget(output, 1)
    output_row.addWidget(browse)
    output_form.addRow(QLabel("Runs folder"), output_row)
    output_form.addRow(QLabel("Run name"), run_name)

    probes = form.add("probes", ProbesEditor())
    probe_grid = form.grid([("train.probe_max_new_tokens", "Answer length")], columns=1)

    compute_label = QLabel("Compute dtype")
    boxes = [
        _box("Model", model, _row(trust), trust_note),
        method.box,
        _box("Dataset", data, data_grid, _row(skip_bad)),
        _box("Quantization", quant_form, _row(double_quant, compute_label, compute, stretch_after=0)),
        _box("LoRA", lora_grid, _row(dora, rslora)),
        _box("Training", form.grid(_rows(TRAIN_KEYS)), _row(checkpointing, batch, stretch_after=0),
             _row(QLabel("Report to"), report_to, stretch_after=1)),
        _box("Taste test: prompts answered at every checkpoint", probes, probe_grid),
        _box("GPUs", gpu_grid, note),
        _box("Output", output_form),
    ]
    return SetupGroups(boxes, model, method, {"quantization.quant_type": quant_type, "quantization.double_quant": double_quant,
                                      "quantization.embeddings": embeddings,
                                      "effective_batch": batch, "trust_warning": trust_note, "probes": probes})


def _report_choices() -> CheckChoices:
    """TensorBoard / W&B check boxes; one whose package is missing says how to install it."""
    from qlora_studio.core.training.reporting import install_hint, installed

    names = {"tensorboard": "TensorBoard", "wandb": "Weights & Biases"}
    choices = CheckChoices([(value, names.get(value, value)) for value in choices_of("train.report_to")])
    for value, box in choices.boxes.items():
        if not installed(value):
            box.setText(f"{box.text()} (not installed)")
            box.setToolTip(f"Install it first: {install_hint(value)}")
    return choices


def _browse_folder(edit: QLineEdit, title: str) -> None:
    folder = QFileDialog.getExistingDirectory(edit, title, edit.text())
    if folder:
        edit.setText(folder)
