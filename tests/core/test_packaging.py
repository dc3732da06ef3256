"""Cheap checks of what packaging/ builds from (the bundle itself is tested by packaging/test_bundle.py,
the wheel by packaging/check_wheel.py in CI): the spec ships every resource file, the icons exist in
every size and format, the .desktop entry points at the icon."""

from __future__ import annotations

import ast
import configparser
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "resources"
SHIPPED = (".svg", ".png", ".ico", ".icns", ".qss", ".yaml", ".jsonl")


def spec_resource_patterns() -> list[str]:
    tree = ast.parse((ROOT / "packaging" / "qlora-studio.spec").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RESOURCE_FILES":
            return ast.literal_eval(node.value)
    raise AssertionError("RESOURCE_FILES not found in the spec")


def test_the_bundle_ships_every_resource_file():
    patterns = spec_resource_patterns()
    matched = {p for pattern in patterns for p in RESOURCES.glob(pattern)}
    wanted = {p for p in RESOURCES.rglob("*") if p.is_file() and p.suffix in SHIPPED}
    assert wanted - matched == set(), "resource files the PyInstaller spec leaves out"


def test_icons_in_every_size_and_format():
    from PySide6.QtGui import QImage

    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        image = QImage(str(RESOURCES / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "qlora-studio.png"))
        assert (image.width(), image.height()) == (size, size)
    ico = (RESOURCES / "icons" / "qlora-studio.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind) == (0, 1) and count >= 6  # an icon directory with 16-256 px images
    icns = (RESOURCES / "icons" / "qlora-studio.icns").read_bytes()
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)


def test_desktop_entry():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(ROOT / "packaging" / "qlora-studio.desktop")
    desktop = entry["Desktop Entry"]
    assert desktop["Icon"] == "qlora-studio" and desktop["Exec"] == "qlora-studio" and desktop["Type"] == "Application"
    assert desktop["StartupWMClass"] == "qlora-studio"  # the window's class: QApplication's name
