"""What one chart repaint costs the GUI thread, by pen and curve shape (bench/NOTES-window.md).

    QT_QPA_PLATFORM=offscreen python bench/paint_cost.py

Paints a 560x330 LiveChart's viewport 20 times per case and prints the GUI thread's CPU time per
repaint: noisy (tokens/s-like) and smooth (smoothed-loss-like) curves of 300 and 3,000 points,
1 px and wide antialiased pens, drawn as one path or as separate segments.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    import numpy as np
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from qlora_studio.gui.widgets.charts import LiveChart, configure_pyqtgraph

    configure_pyqtgraph()
    rng = np.random.default_rng(0)

    def repaint_ms(y: np.ndarray, width: float, segments: str) -> float:
        chart = LiveChart("Cost")
        curve = chart.add_curve("a", "a", "#2563eb", 1.0)
        curve.setPen(pg.mkPen("#2563eb", width=width))
        curve.curve.setSegmentedLineMode(segments)
        chart.resize(560, 330)
        chart.show()
        chart.series["a"].extend(np.arange(len(y)), y)
        chart.redraw()
        chart.grab()
        app.processEvents()
        began = time.thread_time()
        for _ in range(20):
            curve.update()
            chart.viewport().repaint()
        chart.close()
        return (time.thread_time() - began) / 20 * 1000

    print(f"{'curve':16} {'points':>7} {'1 px path':>10} {'1.6 px path':>12} {'1.6 px segments':>16}")
    for n in (300, 3000):
        x = np.arange(n)
        for name, y in (("noisy", 3000 + 1000 * rng.standard_normal(n)), ("smooth", 2 + np.exp(-x / n * 5))):
            cells = [repaint_ms(y, 1.0, "off"), repaint_ms(y, 1.6, "off"), repaint_ms(y, 1.6, "on")]
            print(f"{name:16} {n:7d} " + " ".join(f"{c:{w}.2f}" for c, w in zip(cells, (10, 12, 16))))


if __name__ == "__main__":
    main()
