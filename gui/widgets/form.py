"""Editors for config keys, made from the schema itself: a `Literal` becomes a combo box of exactly
its values, a bool a check box, a bounded int or float a spin box with the field's bounds. Each
editor is bound to one dotted key (`Binding`) with a getter and a setter, so a form is a list of
keys and core's validation stays the only validation.

Spin boxes and combo boxes take the mouse wheel only when focused: scrolling a long form must
never change a setting the pointer happens to cross.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

from annotated_types import Ge, Gt, Le, Lt
from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLineEdit,
    QRadioButton,
    QSpinBox,
    QWidget,
)

from pydantic.fields import FieldInfo

from qlora_studio.core.config import RunConfig, choices, field_help
from qlora_studio.core.config.choices import LORA_TARGET_GROUPS
from qlora_studio.gui.widgets.probes_editor import ProbesEditor

INT_MAX = 2_147_483_647


class WheelOnlyWhenFocused(QObject):
    """An event filter that hands wheel events of unfocused spin and combo boxes to their parent
    (the scroll area), so scrolling the form scrolls the form."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Wheel and not obj.hasFocus():
            event.ignore()
            return True
        return False


_WHEEL_GUARD = None


def guard_wheel(widget: QWidget) -> QWidget:
    global _WHEEL_GUARD
    if _WHEEL_GUARD is None:
        _WHEEL_GUARD = WheelOnlyWhenFocused()
    widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # not WheelFocus: the wheel must not focus it either
    widget.installEventFilter(_WHEEL_GUARD)
    return widget


def fit_text_width(combo: QComboBox, characters: int) -> QComboBox:
    """A combo box as wide as its layout gives it, at least `characters` wide: by default its
    minimum width is that of its longest item (a Hub id, a path, a GPU name), which can push the
    window wider than the screen."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo


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
        self.group.buttonToggled.connect(lambda button, checked: checked and self.changed.emit())

    @classmethod
    def for_key(cls, key: str, labels: dict[str, str]) -> "ChoiceButtons":
        """One button per value the schema allows for `key` (labelled from `labels`, else the value)."""
        return cls([(value, labels.get(value, value)) for value in choices(key)])

    def value(self) -> str | None:
        return next((v for v, b in self.buttons.items() if b.isChecked()), None)

    def setValue(self, value: str) -> None:  # noqa: N802 - Qt naming, like the widgets it sits with
        if value in self.buttons:
            self.buttons[value].setChecked(True)

    def setToolTip(self, text: str) -> None:  # noqa: N802
        super().setToolTip(text)
        for button in self.buttons.values():
            button.setToolTip(text)


class CheckChoices(QWidget):
    """Check boxes for a list of choices (train.report_to); `boxes[value]` for tests and keyboard users."""

    changed = Signal()

    def __init__(self, options: list[tuple[str, str]], parent: QWidget | None = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.boxes: dict[str, QCheckBox] = {}
        for value, label in options:
            box = QCheckBox(label)
            box.setObjectName(f"check-{value}")
            box.toggled.connect(lambda _checked: self.changed.emit())
            self.boxes[value] = box
            layout.addWidget(box)
        layout.addStretch(1)

    def value(self) -> list[str]:
        return [v for v, box in self.boxes.items() if box.isChecked()]

    def setValue(self, values: list[str]) -> None:  # noqa: N802 - Qt naming
        for value, box in self.boxes.items():
            box.setChecked(value in (values or []))


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


class ValueEditor(QWidget):
    """A composite editor of one key (a list of sections, say): `value()` and `setValue()` in the
    config's JSON form, `changed` after each edit by the user."""

    changed = Signal()

    def value(self) -> Any:
        raise NotImplementedError

    def setValue(self, value: Any) -> None:  # noqa: N802 - Qt naming, like the widgets it sits with
        raise NotImplementedError


@dataclass
class Binding:
    key: str
    widget: QWidget
    get: Callable[[], Any]
    put: Callable[[Any], None]
    changed: Any  # the widget's signal that reports an edit


def field_of(key: str):
    node: Any = RunConfig
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.model_fields[part].annotation
    return node.model_fields[parts[-1]]


def _bounds(info: FieldInfo) -> tuple[float | None, float | None, bool, bool]:
    """(lowest, highest, lowest excluded, highest excluded) as the field's constraints allow."""
    lo = hi = None
    lo_open = hi_open = False
    for meta in info.metadata:
        if isinstance(meta, Ge):
            lo = meta.ge
        elif isinstance(meta, Gt):
            lo, lo_open = meta.gt, True
        elif isinstance(meta, Le):
            hi = meta.le
        elif isinstance(meta, Lt):
            hi, hi_open = meta.lt, True
    return lo, hi, lo_open, hi_open


def literal_values(info: FieldInfo) -> tuple[Any, ...]:
    """The values a field's `Literal` annotation allows (core's `choices`, for a field of any model:
    the items of a list section such as train.grpo.rewards too)."""
    for candidate in (info.annotation, *typing.get_args(info.annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return ()


def editor_for(key: str, none_text: str | None = None) -> QWidget:
    """The editor the schema implies for `key` (`none_text`: an optional int's empty choice)."""
    return editor_for_field(field_of(key), none_text)


def editor_for_field(info: FieldInfo, none_text: str | None = None) -> QWidget:
    """The editor a pydantic field's annotation and bounds imply."""
    values = literal_values(info)
    if values:
        return guard_wheel(_combo(values))
    annotation = info.annotation
    kinds = {a for a in (annotation, *typing.get_args(annotation)) if a in (bool, int, float)}
    lo, hi, lo_open, hi_open = _bounds(info)
    if bool in kinds:
        return QCheckBox()
    if int in kinds:
        spin = QSpinBox()
        low = int(lo if lo is not None else 0) + (1 if lo_open else 0)
        spin.setRange(low - 1 if none_text else low, int(hi if hi is not None else INT_MAX))
        if none_text:
            spin.setSpecialValueText(none_text)
        spin.setKeyboardTracking(False)
        spin.setAccelerated(True)
        return guard_wheel(spin)
    if float in kinds:
        spin = QDoubleSpinBox()
        fraction = hi is not None and hi <= 1
        step = 0.01 if fraction else 1.0
        spin.setDecimals(3 if fraction else 2)
        spin.setSingleStep(step)
        low = (lo if lo is not None else -100_000.0) + (0.01 if lo_open else 0.0)  # unbounded: a weight may be negative
        high = (hi - 0.01 if hi_open else hi) if hi is not None else 100_000.0
        spin.setRange(low, high)
        spin.setKeyboardTracking(False)
        return guard_wheel(spin)
    return QLineEdit()


def _combo(values) -> QComboBox:
    combo = QComboBox()
    combo.addItems([str(v) for v in values])
    return combo


def bind(key: str, widget: QWidget, info: FieldInfo | None = None) -> Binding:
    """Getter, setter and change signal for `widget` as the editor of `key` (`info`: the field, when
    `key` is not a dotted config key, e.g. a cell of the rewards table)."""
    info = info if info is not None else field_of(key)
    widget.setObjectName(key)
    widget.setToolTip(info.description or "")
    if isinstance(widget, (ChoiceButtons, CheckChoices, ProbesEditor)) or isinstance(widget, ValueEditor):
        return Binding(key, widget, widget.value, widget.setValue, widget.changed)
    if isinstance(widget, QCheckBox):
        return Binding(key, widget, widget.isChecked, lambda v: widget.setChecked(bool(v)), widget.toggled)
    if isinstance(widget, QSpinBox):
        if widget.specialValueText():  # the lowest value stands for None
            low = widget.minimum()
            return Binding(key, widget, lambda: None if widget.value() == low else widget.value(),
                           lambda v: widget.setValue(low if v is None else int(v)), widget.valueChanged)
        return Binding(key, widget, widget.value, lambda v: widget.setValue(int(v)), widget.valueChanged)
    if isinstance(widget, QDoubleSpinBox):
        return Binding(key, widget, widget.value, lambda v: widget.setValue(float(v)), widget.valueChanged)
    if isinstance(widget, QComboBox) and key == "lora.target_modules":
        def get_targets() -> Any:
            text = widget.currentText().strip()
            if text in LORA_TARGET_GROUPS:
                return text
            return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]

        return Binding(key, widget, get_targets,
                       lambda v: widget.setCurrentText(v if isinstance(v, str) else ", ".join(v)),
                       widget.currentTextChanged)
    if isinstance(widget, QComboBox):
        getter = (lambda: widget.currentText().strip()) if widget.isEditable() else widget.currentText
        return Binding(key, widget, getter, lambda v: widget.setCurrentText(str(v or "")), widget.currentTextChanged)
    if isinstance(widget, QLineEdit) and key == "distributed.gpus":
        def get_gpus() -> Any:
            parts = [p.strip() for p in widget.text().replace(";", ",").split(",") if p.strip()]
            return [int(p) if p.isdigit() else p for p in parts] or None  # core names a bad entry

        return Binding(key, widget, get_gpus, lambda v: widget.setText(", ".join(map(str, v or []))),
                       widget.textChanged)
    if isinstance(widget, QLineEdit):
        optional = info.default is None
        return Binding(key, widget, (lambda: widget.text().strip() or None) if optional else (lambda: widget.text().strip()),
                       lambda v: widget.setText("" if v is None else str(v)), widget.textChanged)
    raise TypeError(f"cannot bind {type(widget).__name__}")


def is_spin_or_combo(widget: QWidget) -> bool:
    return isinstance(widget, (QAbstractSpinBox, QComboBox))


class Form:
    """Makes editors for config keys and keeps their bindings: a page reads and writes its config
    through `bindings`, and lays the editors out with `grid`."""

    def __init__(self) -> None:
        self.bindings: dict[str, Binding] = {}

    def add(self, key: str, widget: QWidget | None = None, none_text: str | None = None) -> QWidget:
        widget = widget if widget is not None else editor_for(key, none_text)
        if is_spin_or_combo(widget):
            guard_wheel(widget)
        self.bindings[key] = bind(key, widget)
        return widget

    def grid(self, rows: list[tuple], columns: int = 2):
        """(key, label[, widget or none_text]) rows laid out in `columns` label/editor pairs."""
        from PySide6.QtWidgets import QGridLayout, QLabel

        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(6)
        for i, (key, text, *extra) in enumerate(rows):
            special = extra[0] if extra else None
            widget = self.add(key, special if isinstance(special, QWidget) else None,
                              special if isinstance(special, str) else None)
            label = QLabel(text)
            label.setToolTip(field_help(key))
            r, c = divmod(i, columns)
            grid.addWidget(label, r, c * 2)
            grid.addWidget(widget, r, c * 2 + 1)
        for c in range(columns):
            grid.setColumnStretch(c * 2 + 1, 1)
        return grid
