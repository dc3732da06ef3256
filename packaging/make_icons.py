"""Render the app icon (resources/icons/qlora-studio.svg) into what each desktop wants:

    python packaging/make_icons.py

* PNGs of the freedesktop sizes (resources/icons/hicolor/<n>x<n>/apps/qlora-studio.png), for the
  .desktop entry on Linux (`packaging/install_desktop.sh` copies them into ~/.local/share/icons);
* qlora-studio.ico (Windows: the PyInstaller exe and the window) with 16-256 px images;
* qlora-studio.icns (macOS) with 16-1024 px images.

The SVG is drawn by Qt's own SVG renderer (QtSvg, part of PySide6-Essentials); Pillow packs the ICO
and ICNS containers. Run it again after editing the SVG and commit the results.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
ICONS = ROOT / "resources" / "icons"
SVG = ICONS / "qlora-studio.svg"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZES = (16, 32, 64, 128, 256, 512, 1024)


def render(size: int) -> bytes:
    """The SVG as a size x size PNG (antialiased, transparent background)."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    QSvgRenderer(str(SVG)).render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data)


def main() -> int:
    from PIL import Image
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 - QImage painting needs it
    images = {size: render(size) for size in sorted(set(PNG_SIZES) | set(ICO_SIZES) | set(ICNS_SIZES))}
    for size in PNG_SIZES:
        target = ICONS / "hicolor" / f"{size}x{size}" / "apps" / "qlora-studio.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(images[size])
    largest = Image.open(io.BytesIO(images[max(ICO_SIZES)]))
    largest.save(ICONS / "qlora-studio.ico", sizes=[(s, s) for s in ICO_SIZES],
                 append_images=[Image.open(io.BytesIO(images[s])) for s in ICO_SIZES[:-1]])
    biggest = Image.open(io.BytesIO(images[max(ICNS_SIZES)]))
    biggest.save(ICONS / "qlora-studio.icns", append_images=[Image.open(io.BytesIO(images[s])) for s in ICNS_SIZES[:-1]])
    print(f"wrote {len(PNG_SIZES)} PNGs, qlora-studio.ico and qlora-studio.icns under {ICONS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
