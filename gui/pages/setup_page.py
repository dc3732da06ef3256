"""The setup page: pickers and toggles that edit one `RunConfig`, with the memory panel and the
dataset X-ray beside them.

The form is a list of config keys (`groups`); each editor comes from the schema (`widgets.form`),
an edit becomes `config.with_overrides({key: value})` so core's validation is the only validation,
and `set_config` (presets, loaded files, "Make it fit") writes every editor back. Tooltips are the
config's own field docs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QScrollArea, QSplitter, QVBoxLayout, QWidget

from qlora_studio.core.config import RunConfig, load_config
from qlora_studio.core.errors import ConfigError
from qlora_studio.gui.panels.memory_panel import MemoryPanel
from qlora_studio.gui.settings import Settings
from qlora_studio.gui.pages.setup_groups import build_groups
from qlora_studio.gui.widgets.config_bar import ConfigBar
from qlora_studio.gui.widgets.form import Binding, Form
from qlora_studio.gui.widgets.model_library import LibraryContext
from qlora_studio.gui.panels.xray import DataXRay


class SetupPage(QWidget):
    config_changed = Signal(object)  # the new RunConfig
    error = Signal(str, str, str)  # (title, reason, details): the window shows a dialog
    start_blocker_changed = Signal(str)  # why Start must wait ("" when it need not)

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.config = self._initial_config()
        self._loading = False
        self._problems: dict[str, str] = {}
        self._model_problem = ""  # what the model line shows in red (or that only a built-in shape is known)
        self._blocker = ""

        self.memory = MemoryPanel()
        self.xray = DataXRay()
        self.memory.fitted.connect(lambda config, _message: self.set_config(config))
        for signal in (self.xray.report_ready, self.xray.report_failed, self.xray.reading):
            signal.connect(self._update_blocker)
        self.xray.report_ready.connect(lambda report: self.groups.dependents["probes"].set_suggestions(
            report.validation_prompts))

        self.form = Form()
        self.groups = build_groups(self.form, self._start_folder)
        self.model = self.groups.model_picker
        self.model.info_ready.connect(lambda info: self._set_model_problem(
            f"{info.name} cannot be loaded: {info.unavailable}" if info.unavailable else ""))
        self.model.info_failed.connect(self._set_model_problem)
        self.model.set_library_context(LibraryContext.for_setup_page(self))
        left = QWidget()
        left.setObjectName("setupForm")
        column = QVBoxLayout(left)
        column.setContentsMargins(4, 4, 8, 4)
        column.setSpacing(8)
        self.config_bar = ConfigBar(self._start_folder)
        self.preset_combo = self.config_bar.preset_combo
        self.config_bar.preset_chosen.connect(self.apply_preset)
        self.config_bar.load_requested.connect(self.load_config_file)
        self.config_bar.import_requested.connect(self.import_config)
        self.config_bar.save_requested.connect(self.save_config_file)
        column.addWidget(self.config_bar)
        for box in self.groups.boxes:
            column.addWidget(box)
        self.problem_label = QLabel("")
        self.problem_label.setObjectName("problemLabel")
        self.problem_label.setWordWrap(True)
        self.problem_label.hide()
        column.addWidget(self.problem_label)
        column.addStretch(1)
        for binding in self.form.bindings.values():
            binding.changed.connect(lambda *_, key=binding.key: self._edited(key))

        scroll = _vertical_scroll(left)
        # as narrow as the form allows, never narrower (its content would be cut: no horizontal bar)
        scroll.setMinimumWidth(left.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(8, 4, 4, 4)
        right_layout.addWidget(self.memory)
        right_layout.addWidget(self.xray, 1)
        # On a short screen the column scrolls rather than squeezing wrapped lines out of sight.
        right_scroll = _vertical_scroll(right)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(right_scroll)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.splitter)

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

    # ---- config in and out ----
    @property
    def bindings(self) -> dict[str, Binding]:
        return self.form.bindings

    def widget(self, key: str) -> QWidget:
        return self.form.bindings[key].widget

    def set_config(self, config: RunConfig) -> None:
        """Show `config` in every editor (presets, loaded files, make-it-fit) and announce it."""
        self._loading = True
        try:
            _put(self.bindings, config, self.bindings)
        finally:
            self._loading = False
        self._problems.clear()
        self._show_problems()
        self._apply(config)

    def _edited(self, key: str) -> None:
        if self._loading:
            return
        value = self.bindings[key].get()
        implied = self.groups.implied(key, value, self.config)
        try:
            config = self.config.with_overrides({key: value, **implied}, source="setting")
        except ConfigError as exc:
            self._problems[key] = str(exc).removeprefix("setting: ")
            self._show_problems()
            return
        self._problems.pop(key, None)
        config, settled = _settle_problems(config, self._problems, self.bindings, self.groups.implied)
        self._show_problems()
        if key == "model.name_or_path" and config.model.trust_remote_code:  # the trust was given to the old model
            config = config.with_overrides({"model.trust_remote_code": False}, source="setting")
            implied["model.trust_remote_code"] = False
        _put(self.bindings, config, (set(implied) | settled) - {key})  # what changed along with the edit, shown
        if key == "output_dir":
            self.settings.set("setup/output_dir", value)
        self._apply(config)

    def _show_problems(self) -> None:
        for key, binding in self.bindings.items():
            binding.widget.setProperty("invalid", key in self._problems)
            binding.widget.style().unpolish(binding.widget)
            binding.widget.style().polish(binding.widget)
        self.problem_label.setText("⚠ " + "\n⚠ ".join(self._problems.values()))
        self.problem_label.setVisible(bool(self._problems))
        self._update_blocker()

    @property
    def valid(self) -> bool:
        """False while an editor holds a value core rejects (the config keeps the last good one)."""
        return not self._problems

    @property
    def start_blocker(self) -> str:
        """Why a run could not start with what Setup shows (a rejected value, a model or dataset
        that cannot be read, bad rows that would stop it), or "" when Start may go ahead."""
        if self._problems:
            return next(iter(self._problems.values()))
        blocker = self._model_problem or self.groups.start_blocker(self.config)  # a python reward needs a yes
        if blocker:
            return blocker
        if self.xray.error:
            return f"the dataset cannot be read: {self.xray.error}"
        report = self.xray.report
        if report is not None and report.bad_rows and not self.config.data.skip_bad_rows:
            return (f"the dataset has {report.bad_rows:,} bad row(s): fix them or turn on “Skip bad rows” "
                    "(the X-ray's Problems tab lists them)")
        return ""

    def _set_model_problem(self, reason: str) -> None:
        self._model_problem = reason
        self._update_blocker()

    def _update_blocker(self, *_: Any) -> None:
        blocker = self.start_blocker
        if blocker != self._blocker:
            self._blocker = blocker
            self.start_blocker_changed.emit(blocker)

    def _apply(self, config: RunConfig) -> None:
        previous = self.config
        self.config = config
        self.groups.show_config(config)
        self.settings.set("setup/model", config.model.name_or_path)
        self.settings.set("setup/data", config.data.path)
        if previous is None or previous.model != config.model or self.model.info_label.text() == "":
            self._model_problem = ""  # until the new model has been read
            self.model.describe(config.model.name_or_path, config.model.trust_remote_code)
        self.memory.set_config(config)
        self.xray.set_config(config)
        self._show_preset(config)
        self._update_blocker()
        self.config_changed.emit(config)

    def apply_preset(self, name: str) -> None:
        from qlora_studio.resources import preset_paths

        try:
            config = load_config(preset_paths()[name]).with_overrides({"output_dir": self.settings.output_dir()})
        except ConfigError as exc:
            self.error.emit("Preset", str(exc), "")
            return
        self.set_config(config)

    def _show_preset(self, config: RunConfig) -> None:
        self.config_bar.show_config(config)

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

    # ---- file dialogs ----
    def _start_folder(self) -> str:
        return self.settings.get("setup/config_folder") or str(Path.home())

    def import_config(self, path: str | Path | None = None):
        """An axolotl or LLaMA-Factory config: what carries over, and what does not, in a dialog."""
        from qlora_studio.gui.dialogs.import_dialog import import_config_file

        return import_config_file(self, path or None)

    def shutdown(self) -> None:
        self.model.shutdown()
        self.memory.shutdown()
        self.xray.shutdown()


def _put(bindings: dict[str, Binding], config: RunConfig, keys: Iterable[str]) -> None:
    """Show `config`'s values of `keys` in their editors, announcing no edit."""
    for key in keys:
        binding = bindings[key]
        binding.widget.blockSignals(True)
        try:
            binding.put(_value(config, key))
        finally:
            binding.widget.blockSignals(False)


def _settle_problems(config: RunConfig, problems: dict[str, str], bindings: dict[str, Binding],
                     implied) -> tuple[RunConfig, set[str]]:
    """Editors holding a value core rejected may fit after another edit (GRPO once num_generations
    divides the batch): the values that fit now join the config, and their problems go. Also
    returns the keys that changed along with them (a method's demo data)."""
    along: set[str] = set()
    for key in list(problems):
        value = bindings[key].get()
        also = implied(key, value, config)
        try:
            config = config.with_overrides({key: value, **also}, source="setting")
        except ConfigError:
            continue
        del problems[key]
        along |= set(also)
    return config, along


def _vertical_scroll(widget: QWidget) -> QScrollArea:
    """`widget` in a frameless area that scrolls up and down, never sideways (it takes the width it is given)."""
    scroll = QScrollArea()
    scroll.setWidget(widget)
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    return scroll


def _value(config: RunConfig, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node

