"""Can the window open here? Said in one line before Qt would abort.

Without a display, or with Qt's X11 libraries missing, Qt aborts the process (exit 134) with
"xcb-cursor0 is needed... Reinstalling the application may fix this problem", which is wrong
in both cases. `display_problem()` finds the two common causes first (no Qt import needed), and
`fatal_qt_messages_exit()` turns any other fatal start-up message of Qt into one line and exit 1.

`python -m qlora_studio.gui.display` prints the finding (packaging/install.sh runs it).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from typing import Callable

EXIT_NO_WINDOW = 1
HEADLESS_HINT = ("run headless instead (`qlora-studio train --demo`; `qlora-studio --help` lists every command), "
                 "or start the window under a virtual display: `xvfb-run qlora-studio`")

# The shared libraries Qt's xcb platform plugin loads (libqxcb.so and libQt6XcbQpa.so.6), by
# soname, with the package that ships each: (Debian/Ubuntu, Fedora/RHEL). Minimal desktops and
# containers lack some of them; Qt then names only libxcb-cursor, whatever is missing.
XCB_LIBRARIES = {
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
}


def _loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_xcb_libraries(loadable: Callable[[str], bool] = _loadable) -> list[str]:
    return [name for name in XCB_LIBRARIES if not loadable(name)]


def install_line(sonames: list[str], which: Callable[[str], str | None] = shutil.which) -> str:
    """The command that installs the packages holding `sonames` on this system."""
    apt = sorted({XCB_LIBRARIES[name][0] for name in sonames})
    dnf = sorted({XCB_LIBRARIES[name][1] for name in sonames})
    if which("apt-get"):
        return f"sudo apt install {' '.join(apt)}"
    if which("dnf"):
        return f"sudo dnf install {' '.join(dnf)}"
    return f"sudo apt install {' '.join(apt)} (Fedora: sudo dnf install {' '.join(dnf)})"


def display_problem(environ: dict[str, str] | None = None, platform: str = sys.platform,
                    loadable: Callable[[str], bool] = _loadable) -> str | None:
    """Why the window cannot open here, in one line, or None when it should."""
    env = os.environ if environ is None else environ
    if not platform.startswith("linux"):
        return None
    qpa = env.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if qpa and qpa not in ("xcb", "wayland", "wayland-egl"):
        return None  # offscreen, vnc, eglfs...: the user chose a platform that needs no desktop
    x11, wayland = bool(env.get("DISPLAY")), bool(env.get("WAYLAND_DISPLAY"))
    if qpa.startswith("wayland"):
        x11 = False
    if not x11 and not wayland:
        return f"no display found (DISPLAY and WAYLAND_DISPLAY are not set), so the window cannot open; {HEADLESS_HINT}"
    if x11 and (qpa == "xcb" or not wayland):
        missing = missing_xcb_libraries(loadable)
        if missing:
            return (f"the window needs Qt's X11 libraries {', '.join(missing)}, which are missing: "
                    f"install them with `{install_line(missing)}`")
    return None


def fatal_qt_messages_exit():
    """Until the returned `done()` is called, a fatal Qt message (the platform plugin failing to
    start) ends the process with one line and EXIT_NO_WINDOW instead of Qt's abort; other messages
    are kept and printed by `done()` as Qt would have."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    kept: list[str] = []

    def handler(kind, _context, message: str) -> None:
        if kind == QtMsgType.QtFatalMsg:
            first = next((m for m in kept if "could not connect" in m.lower()), None) or message.splitlines()[0]
            where = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or "none"
            print(f"qlora-studio: the window cannot open on display {where} ({first}); {HEADLESS_HINT}",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_NO_WINDOW)  # Qt aborts right after this handler returns
        kept.append(message)

    qInstallMessageHandler(handler)

    def done() -> None:
        qInstallMessageHandler(None)
        for message in kept:
            print(message, file=sys.stderr)

    return done


def main() -> int:
    problem = display_problem()
    if problem:
        print(f"qlora-studio: {problem}", file=sys.stderr)
        return EXIT_NO_WINDOW
    print("qlora-studio: a display is available for the window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
