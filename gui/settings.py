"""UI state that outlives the window (last model, dataset, output folder, geometry) over QSettings.

Every key and its default live in one table, so a missing or stale value never needs handling
at the call site; values come back with the default's type (QSettings' INI backend stores
strings).
"""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

ORGANIZATION = "qlora-studio"
APPLICATION = "qlora-studio"
SETTINGS_ENV = "QLORA_STUDIO_SETTINGS"  # an .ini path: tests and smoke runs keep the user's settings untouched

DEFAULTS: dict[str, Any] = {
    "setup/model": "",  # empty: the demo preset's model
    "setup/data": "",  # empty: the demo preset's dataset
    "setup/output_dir": "",  # empty: default_output_dir()
    "setup/config_folder": "",  # where the last config was loaded from or saved to
    "memory/budget": "auto",  # auto (the detected GPU) or a size in GB
    "library/gguf_folders": "",  # folders whose .gguf files the model library lists, one per line
    "monitor/smoothing": 0.6,
    "monitor/log_scale": False,
    "monitor/extend_steps": 100,
    "window/geometry": QByteArray(),
    "window/splitter": QByteArray(),
    "window/page": 0,
}


def default_output_dir() -> str:
    """Runs go to core's default runs folder (the CLI's too) unless the user chose one."""
    from qlora_studio.core.config.files import default_runs_dir

    return str(default_runs_dir())


def open_qsettings() -> QSettings:
    path = os.environ.get(SETTINGS_ENV)
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


class Settings:
    def __init__(self, store: QSettings | None = None):
        self.store = store if store is not None else open_qsettings()

    def get(self, key: str) -> Any:
        default = DEFAULTS[key]
        value = self.store.value(key, default)
        if value is None:
            return default
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(default, (int, float)):
            try:
                return type(default)(value)
            except (TypeError, ValueError):
                return default
        if isinstance(default, QByteArray):
            return value if isinstance(value, QByteArray) else QByteArray(value if isinstance(value, bytes) else b"")
        return str(value)

    def set(self, key: str, value: Any) -> None:
        if key not in DEFAULTS:
            raise KeyError(f"unknown setting {key!r}: add it to DEFAULTS")
        self.store.setValue(key, value)

    def sync(self) -> None:
        self.store.sync()

    def output_dir(self) -> str:
        return self.get("setup/output_dir") or default_output_dir()
