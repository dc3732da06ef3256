"""The desktop app's entry point: `qlora-studio` with no arguments, or `qlora-studio gui [CONFIG]`.

Heavy libraries (torch, transformers) load lazily on worker threads, so the window appears at
once. QLORA_STUDIO_SMOKE_QUIT_MS=<ms> closes the window that long after it is shown (the
start-up smoke test).
"""

from __future__ import annotations

import argparse
import os
import sys

SMOKE_ENV = "QLORA_STUDIO_SMOKE_QUIT_MS"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qlora-studio gui", description="Open the QLoRA Studio window.")
    parser.add_argument("config", nargs="?", help="a config YAML to open instead of the demo preset")
    return parser.parse_args(argv)


def apply_style(app) -> None:
    from qlora_studio.resources import STYLES

    app.setStyle("Fusion")
    sheet = STYLES / "studio.qss"
    if sheet.is_file():
        app.setStyleSheet(sheet.read_text(encoding="utf-8"))


def app_icon():
    """The icon in every size the app ships (the SVG needs Qt's SVG plugin, which a bundle may lack)."""
    from PySide6.QtGui import QIcon

    from qlora_studio.resources import ICONS

    icon = QIcon()
    for png in sorted(ICONS.glob("hicolor/*/apps/qlora-studio.png")):
        icon.addFile(str(png))
    icon.addFile(str(ICONS / "qlora-studio.svg"))
    return icon


def create_app(argv: list[str] | None = None):
    from PySide6.QtWidgets import QApplication

    from qlora_studio.gui.widgets.charts import configure_pyqtgraph
    from qlora_studio.gui.settings import APPLICATION, ORGANIZATION

    app = QApplication.instance()
    if app is None:
        from qlora_studio.gui.display import fatal_qt_messages_exit

        done = fatal_qt_messages_exit()  # a platform plugin that cannot start: one line, not Qt's abort
        app = QApplication(["qlora-studio", *(argv or [])])
        done()
        apply_style(app)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("QLoRA Studio")
    app.setDesktopFileName("qlora-studio")  # Wayland and docks match the window to the installed .desktop entry
    app.setWindowIcon(app_icon())
    configure_pyqtgraph()
    if not hasattr(app, "_studio_gc"):
        from qlora_studio.gui.gc_guard import GuiThreadGarbageCollector

        app._studio_gc = GuiThreadGarbageCollector()
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from qlora_studio.core.model.devices import configure_cuda_allocator

    configure_cuda_allocator()  # before a worker thread touches CUDA: training runs in this process
    app = create_app()
    from PySide6.QtCore import QTimer

    from qlora_studio.gui.main_window import MainWindow

    window = MainWindow(config_path=args.config)
    window.show()
    smoke_ms = os.environ.get(SMOKE_ENV)
    if smoke_ms:
        print("qlora-studio: window shown", flush=True)
        QTimer.singleShot(int(smoke_ms), window.close)
    return app.exec()
