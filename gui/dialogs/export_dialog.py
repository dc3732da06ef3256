"""The Export dialog: a run's adapter (final or a checkpoint) as the adapter folder, a merged model,
a GGUF file or an Ollama folder, written by core's `export_run` on a worker thread with progress
and Cancel (which removes what was half written), then checked against the run (core's
`check_parity`: the held-out rows answered by both, side by side). What this model or this
machine cannot do is greyed out with the reason."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui.widgets.form import ChoiceButtons
from qlora_studio.gui.workers.tasks import ProgressTask

FORMATS = [("adapter", "Adapter (PEFT)"), ("merged", "Merged model"), ("gguf", "GGUF file"), ("ollama", "Ollama")]
HELP = {
    "adapter": "The LoRA adapter with its tokenizer and chat template: load it on the base with PeftModel.from_pretrained.",
    "merged": "Base + adapter as one plain transformers model (16-bit safetensors, tokenizer, chat template, "
              "generation config): AutoModelForCausalLM.from_pretrained(folder).",
    "gguf": "One .gguf file for llama.cpp, LM Studio, Jan, GPT4All. q4_k_m is what most people load; q8_0 is "
            "nearly lossless at half the size of f16.",
    "ollama": "A folder with model.gguf and a Modelfile (chat template, stop tokens, system prompt): "
              "ollama create NAME -f Modelfile.",
}
QUANT_NOTES = {"q4_k_m": "q4_k_m (recommended, what Ollama and LM Studio load)", "q8_0": "q8_0 (nearly lossless)",
               "q5_k_m": "q5_k_m (lossy, closer)", "q6_k": "q6_k (near lossless)", "f16": "f16 (exact, largest)",
               "f32": "f32", "bf16": "bf16", "q5_1": "q5_1 (lossy)", "q5_0": "q5_0 (lossy)", "q4_1": "q4_1 (lossy)",
               "q4_0": "q4_0 (lossy)"}
CHECK_ROWS = 100


def _export(ref, to: str, out: str, quant: str, system: str | None, check: bool, check_data: str | None,
            progress=None, cancel=None):
    """(the exported path, the parity check or None): export, then answer the held-out rows (the run's
    validation split, or the file `check_data`) with both."""
    from qlora_studio.core.after.export.parity import check_parity, save_parity
    from qlora_studio.core.after.export.run import export_run
    from qlora_studio.core.after.jobs import Job

    job = Job(progress, cancel)
    path = export_run(ref, to, out, quant=quant, system_prompt=system, cancel=cancel,
                      progress=job.sub(0.0, 0.6 if check else 1.0).report)
    if not check:
        return path, None
    parity = check_parity(ref, path, to, data=check_data, limit=CHECK_ROWS, progress=job.sub(0.6, 1.0).report,
                          cancel=cancel)
    save_parity(parity, ref.run_dir)
    return path, parity


class ExportDialog(QDialog):
    def __init__(self, run_dir: str, adapter: str = "final", parent: QWidget | None = None):
        super().__init__(parent)
        from qlora_studio.core.after.adapters import available_adapters
        from qlora_studio.core.after.export import GGUF_QUANTS, llamacpp

        self.setObjectName("exportDialog")
        self.setWindowTitle(f"Export {Path(run_dir).name}")
        self.setMinimumWidth(640)
        self.run_dir = run_dir
        self.result_path: Path | None = None
        self._auto_out = ""
        self._gguf_blocker: str | None = None  # read once from the model's config.json

        self.adapter = QComboBox()
        self.adapter.setObjectName("exportAdapter")
        for label, step in available_adapters(run_dir):
            self.adapter.addItem("final adapter" if step is None else f"checkpoint {label}", label)
        self.adapter.setCurrentIndex(max(self.adapter.findData(adapter), 0))
        self.format = ChoiceButtons(FORMATS)
        self.format.setObjectName("exportFormat")
        self.format.setValue("gguf")  # or merged, once the blockers are known (_show_blockers)
        self.help = QLabel("")
        self.help.setObjectName("hint")
        self.help.setWordWrap(True)
        self.quant = QComboBox()
        self.quant.setObjectName("exportQuant")
        has_llama_cpp = llamacpp.available()
        for name in GGUF_QUANTS:
            self.quant.addItem(QUANT_NOTES.get(name, name), name)
            if name in llamacpp.K_QUANTS and not has_llama_cpp:  # greyed, with what to install
                item = self.quant.model().item(self.quant.count() - 1)
                item.setEnabled(False)
                item.setToolTip(f"needs llama.cpp: {llamacpp.INSTALL_HINT}")
        self.quant.setCurrentIndex(self.quant.findData("q4_k_m" if has_llama_cpp else "q8_0"))
        self.check = QCheckBox(f"Then check it against the run (its held-out rows, at most {CHECK_ROWS}; or its probes)")
        self.check.setObjectName("exportCheck")
        self.check.setChecked(True)
        self.check_data = QLineEdit()
        self.check_data.setObjectName("exportCheckData")
        self.check_data.setPlaceholderText("the run's validation split (a .jsonl file or sample:NAME to check on other rows)")
        self.check.toggled.connect(self.check_data.setEnabled)
        self.blocker = QLabel("")
        self.blocker.setObjectName("hint")
        self.blocker.setWordWrap(True)
        self.system = QLineEdit()
        self.system.setObjectName("exportSystem")
        self.system.setPlaceholderText("the chat template's own default")
        self.out = QLineEdit()
        self.out.setObjectName("exportOut")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out, 1)
        out_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Adapter", self.adapter)
        form.addRow("Format", self.format)
        form.addRow("", self.help)
        form.addRow("GGUF type", self.quant)
        form.addRow("", self.blocker)
        form.addRow("System prompt", self.system)
        form.addRow("Save to", out_row)
        form.addRow("", self.check)
        form.addRow("Check on", self.check_data)

        self.progress = QProgressBar()
        self.progress.setObjectName("exportProgress")
        self.progress.setRange(0, 1000)
        self.progress.setFormat("")
        self.progress.setTextVisible(True)
        self.message = QLabel("")
        self.message.setObjectName("exportMessage")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.parity = QLabel("")
        self.parity.setObjectName("exportParity")
        self.parity.setStyleSheet("font-family: monospace")
        self.parity.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.parity.setVisible(False)
        self.export_button = QPushButton("Export")
        self.export_button.setObjectName("exportButton")
        self.export_button.setDefault(True)
        self.show_button = QPushButton("Show folder")
        self.show_button.setEnabled(False)
        self.close_button = QPushButton("Close")
        self.close_button.setObjectName("exportCloseButton")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.show_button, self.export_button, self.close_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(self.parity)
        layout.addLayout(buttons)

        self.task = ProgressTask(_export, self)
        self.task.progress.connect(self._on_progress)
        self.task.result.connect(self._on_done)
        self.task.error.connect(self._on_error)
        self.task.busy_changed.connect(self._on_busy)
        self._closing: int | None = None
        self.format.changed.connect(self._options_changed)
        self.adapter.currentIndexChanged.connect(self._options_changed)
        self.quant.currentIndexChanged.connect(self._options_changed)
        self.export_button.clicked.connect(self.start)
        self.close_button.clicked.connect(self._close_or_cancel)
        self.show_button.clicked.connect(self._show)
        self._options_changed()

    # ---- options ----
    def _ref(self):
        from qlora_studio.core.after.adapters import locate_adapter

        return locate_adapter(self.run_dir, self.adapter.currentData())

    def _options_changed(self) -> None:
        from qlora_studio.core.after.export.run import default_output

        to = self.format.value() or "gguf"
        self.help.setText(HELP[to])
        self.quant.setEnabled(to in ("gguf", "ollama"))
        self.system.setEnabled(to == "ollama")
        if self.adapter.count() == 0:
            self.message.setText("This run has no adapter yet (no checkpoint and no final adapter).")
            self._update()
            return
        ref = self._ref()
        self._show_blockers(ref, to)
        if self.format.value() != to:  # moved off a greyed-out format; that change has run this already
            return
        suggested = str(default_output(ref, to, self.quant.currentData()))
        if not self.out.text() or self.out.text() == self._auto_out:  # follow the choice until the user edits it
            self.out.setText(suggested)
        self._auto_out = suggested
        self._update()

    def _show_blockers(self, ref, to: str) -> None:
        """GGUF and Ollama greyed out for a model the GGUF writer cannot do; the check without llama.cpp
        for a GGUF file; each with the reason."""
        from qlora_studio.core.after.export import llamacpp
        from qlora_studio.core.after.export.run import gguf_blocker

        if self._gguf_blocker is None:
            self._gguf_blocker = gguf_blocker(ref) or ""
        for name in ("gguf", "ollama"):
            self.format.buttons[name].setEnabled(not self._gguf_blocker)
            self.format.buttons[name].setToolTip(self._gguf_blocker)
        needs_llama_cpp = to in ("gguf", "ollama") and not llamacpp.available()
        self.check.setEnabled(to != "adapter" and not needs_llama_cpp)
        self.check_data.setEnabled(self.check.isEnabled() and self.check.isChecked())
        self.check.setToolTip(f"checking a GGUF file needs llama.cpp: {llamacpp.INSTALL_HINT}" if needs_llama_cpp
                              else "the adapter is the run's own" if to == "adapter" else "")
        self.blocker.setText(self._gguf_blocker if to in ("gguf", "ollama") else "")
        self.blocker.setVisible(bool(self.blocker.text()))
        if self._gguf_blocker and to in ("gguf", "ollama"):
            self.format.setValue("merged")

    def _browse(self) -> None:
        if self.format.value() == "gguf":
            path, _ = QFileDialog.getSaveFileName(self, "Save GGUF", self.out.text(), "GGUF (*.gguf)")
        else:
            path = QFileDialog.getExistingDirectory(self, "Export into a new or empty folder", self.out.text())
        if path:
            self.out.setText(path)

    # ---- running ----
    def start(self) -> bool:
        if self.task.running or self.adapter.count() == 0:
            return False
        from qlora_studio.core.errors import UserError

        try:
            ref = self._ref()
        except UserError as exc:
            self.message.setText(str(exc))
            return False
        self.result_path = None
        self.show_button.setEnabled(False)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.message.setText("")
        self.parity.setVisible(False)
        system = self.system.text().strip() or None
        check = self.check.isEnabled() and self.check.isChecked()
        check_data = self.check_data.text().strip() or None
        return self.task.start(ref, self.format.value(), self.out.text().strip(), self.quant.currentData(), system, check,
                               check_data)

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(f"{fraction:.0%}  {message}")

    def _on_done(self, result) -> None:
        path, parity = result
        self.result_path = Path(path)
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        text = f"Saved to {path}"
        if self.format.value() == "ollama":
            text += f"\nImport it with: ollama create NAME -f {Path(path) / 'Modelfile'}"
        self.message.setText(text)
        if parity is not None:
            self.parity.setText("\n".join(parity.lines()))
            self.parity.setStyleSheet("font-family: monospace" + ("; color:#b91c1c" if parity.warnings else ""))
            self.parity.setVisible(True)
            self.adjustSize()  # room for the table, without squeezing the wrapped help text
        self.show_button.setEnabled(True)

    def _on_error(self, error) -> None:
        cancelled = "cancelled" in error.reason
        self.progress.setFormat("cancelled" if cancelled else "failed")
        self.message.setText(error.reason)

    def _close_or_cancel(self) -> None:
        if self.task.running:
            self.task.cancel()
            self.message.setText("Cancelling after the current stage…")
        else:
            self.close()

    def _show(self) -> None:
        if self.result_path is not None:
            folder = self.result_path if self.result_path.is_dir() else self.result_path.parent
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def _update(self) -> None:
        running = self.task.running
        self.export_button.setEnabled(not running and self.adapter.count() > 0)
        self.close_button.setText("Cancel" if running else "Close")
        for widget in (self.adapter, self.format, self.out):
            widget.setEnabled(not running)

    def done(self, result: int) -> None:  # Qt's name: closing while exporting cancels first, closes after
        if self.task.running:
            self._closing = result
            self._close_or_cancel()
            return
        self.task.shutdown()
        super().done(result)

    def _on_busy(self, busy: bool) -> None:
        self._update()
        if not busy and self._closing is not None:
            self.done(self._closing)
