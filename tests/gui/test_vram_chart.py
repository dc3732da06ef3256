"""The VRAM chart shows the wall: the run fills the plot on any card, the capacity is drawn
without flattening the lines, labels never overlap, and "Whole card" shows all of it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qlora_studio.gui.widgets.vram_chart import VramChart


def draw_run(qtbot, capacity: float, allocated: float, reserved: float, device: float, predicted: float,
             peak: float) -> VramChart:
    chart = VramChart()
    qtbot.addWidget(chart)
    chart.resize(460, 300)
    chart.show()
    chart.capacity_gb = capacity
    chart.on_cuda = True
    chart.predicted_peak_gb = predicted
    chart.set_message("")
    steps = np.arange(1, 61)
    chart.series["allocated"].extend(steps, allocated + 0.3 * np.sin(steps / 3))
    chart.series["reserved"].extend(steps, np.full(60, reserved))
    chart.series["device"].extend(steps, np.full(60, device))
    chart.note_peak(peak)
    chart.redraw()
    chart.grab()
    return chart


def label_rects(chart: VramChart):
    return {name: label.sceneBoundingRect() for name, label in chart.labels.items() if label.isVisible()}


def assert_no_overlaps(chart: VramChart) -> None:
    rects = label_rects(chart)
    for (a, ra), (b, rb) in itertools.combinations(rects.items(), 2):
        assert not ra.intersects(rb), (a, b, ra, rb)
    legend = chart.legend.sceneBoundingRect()
    view = chart.getPlotItem().getViewBox().sceneBoundingRect()
    assert not legend.intersects(view)  # the legend lies below the plot
    for name, rect in rects.items():
        assert view.adjusted(-1, -1, 1, 1).contains(rect), name  # labels stay inside the plot


@pytest.mark.parametrize("capacity", [79.6, 23.6])
def test_a_10_gib_run_fills_the_plot_on_a_big_card(qtbot, capacity):
    chart = draw_run(qtbot, capacity, allocated=8.0, reserved=9.6, device=10.0, predicted=10.2, peak=9.8)
    (_, _), (y0, y1) = chart.getPlotItem().getViewBox().viewRange()
    assert y0 == 0 and y1 <= 13  # 10 GiB lines take most of the height, not the bottom eighth
    assert chart.series["reserved"].y.max() / y1 > 0.7
    # the card is far above: a marker at the top edge says where, no line squashes the run
    assert not chart.capacity_line.isVisible() and not chart.wall.isVisible()
    assert f"▲ card {capacity:.1f} GiB" in chart.labels["capacity"].toPlainText()
    assert chart.predicted_line.isVisible() and chart.predicted_line.value() == 10.2
    assert "predicted 10.20 GiB" in chart.labels["predicted"].toPlainText()
    assert "peak 9.80 GiB" in chart.labels["peak"].toPlainText()
    assert_no_overlaps(chart)  # predicted 10.2 and peak 9.8 are 0.4 GiB apart

    chart.whole_card.setChecked(True)
    chart.grab()
    (_, _), (_, y1) = chart.getPlotItem().getViewBox().viewRange()
    assert capacity < y1 < capacity * 1.15
    assert chart.capacity_line.isVisible() and chart.capacity_line.value() == capacity and chart.wall.isVisible()
    assert_no_overlaps(chart)
    chart.whole_card.setChecked(False)
    assert chart.getPlotItem().getViewBox().viewRange()[1][1] <= 13


def test_on_a_small_card_the_wall_is_in_the_plot(qtbot):
    chart = draw_run(qtbot, 7.6, allocated=5.5, reserved=6.8, device=7.2, predicted=7.0, peak=6.9)
    (_, _), (_, y1) = chart.getPlotItem().getViewBox().viewRange()
    assert 7.6 < y1 <= 9
    assert chart.capacity_line.isVisible() and chart.capacity_line.value() == 7.6
    assert chart.wall.isVisible() and chart.wall.getRegion()[0] == 7.6  # shaded above the capacity
    assert chart.labels["capacity"].toPlainText() == "card 7.6 GiB"
    assert_no_overlaps(chart)  # three labels within 0.7 GiB


def test_without_a_gpu_the_chart_says_so_and_hides_the_card(qtbot):
    chart = VramChart()
    qtbot.addWidget(chart)
    chart.capacity_gb = None
    chart.reset(predicted_peak_gb=2.0)
    chart.set_message("CPU run: no VRAM to measure")
    chart.show()
    assert not chart.whole_card.isVisible() and not chart.legend.isVisible()
    assert not chart.labels["capacity"].isVisible() and chart.peak_text() == "CPU / predicted 2.00 GiB"
