"""Issue 12: without a display (or with Qt's X11 libraries missing) `qlora-studio` aborted with
exit 134 and Qt's misleading "xcb-cursor0 is needed... Reinstalling the application may fix this
problem". It must exit non-zero with one line that says what is wrong and what to do."""

from __future__ import annotations

import os
import subprocess
import sys

from qlora_studio.gui.display import display_problem, install_line, missing_xcb_libraries

HEADLESS = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}


def test_no_display_exits_with_one_line():
    done = subprocess.run([sys.executable, "-m", "qlora_studio.gui.launcher"], env=HEADLESS, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no display found" in lines[0] and "qlora-studio train --demo" in lines[0]
    # headless commands still work without a display
    assert subprocess.run([sys.executable, "-m", "qlora_studio.gui.launcher", "--help"], env=HEADLESS,
                          capture_output=True, timeout=60).returncode == 0


def test_missing_xcb_libraries_are_named_with_the_install_line():
    absent = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}
    problem = display_problem({"DISPLAY": ":0"}, "linux", loadable=lambda name: name not in absent)
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in problem and "xcb-cursor" not in problem
    assert install_line(sorted(absent), which=lambda tool: tool == "apt-get") == \
        "sudo apt install libxcb-icccm4 libxcb-keysyms1"
    assert install_line(sorted(absent), which=lambda tool: tool == "dnf") == \
        "sudo dnf install xcb-util-keysyms xcb-util-wm"
    # nothing to say where everything is there, on Wayland, with an explicit headless platform, off Linux
    everything = lambda name: True  # noqa: E731
    assert missing_xcb_libraries(everything) == []
    assert display_problem({"DISPLAY": ":0"}, "linux", loadable=everything) is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux", loadable=lambda name: False) is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_problem({}, "darwin") is None


def test_any_other_fatal_qt_start_is_one_line_too():
    """A display that is set but does not answer: Qt's own fatal message becomes our one line."""
    code = ("from qlora_studio.gui.display import fatal_qt_messages_exit\n"
            "fatal_qt_messages_exit()\n"
            "from PySide6.QtWidgets import QApplication\n"
            "QApplication(['x'])\n")
    done = subprocess.run([sys.executable, "-c", code], env={**HEADLESS, "QT_QPA_PLATFORM": "xcb"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qlora-studio: the window cannot open") and "headless" in lines[0]
