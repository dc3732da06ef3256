"""A long session in the real window: a fake runner feeds 50,000 step events (plus evaluations,
checkpoints, warnings, a pause, a skipped NaN step and the end) as fast as the window takes them.

    QT_QPA_PLATFORM=offscreen python bench/soak_window.py                          # flood: as fast as it goes
    QT_QPA_PLATFORM=offscreen python bench/soak_window.py --steps 3000 --rate 100  # paced like a fast real run

The events cross from a worker QThread into the GUI thread through a queued Qt signal, as the
training worker's do, and are handled by the window's own `_on_event`. The producer keeps at most
`--in-flight` events queued (a real run cannot outrun the window for ever; without a bound the
queue, not the window, would be measured); with `--rate` it emits that many events a second, like
a run of small fast steps. Measured on the GUI thread:

- handling latency: the time `_on_event` takes for one event (p50 / p99 / max, per kind);
- delivery latency: emit on the worker thread -> handled (queue wait, chart redraws and painting
  between events included);
- stalls: the largest gaps between ticks of a 20 ms heartbeat timer (how long the window froze);
- chart redraws: the time each ChartBoard frame takes (the ~10 Hz `setData` of changed curves),
  and the time each chart's paint takes (wrapped here: the chart code is measured, not changed);
- garbage collection on the GUI thread (gui/gc_guard.py): how many collections of each generation
  ran and how long they held the thread;
- memory: resident set size after a 2,000-step warm-up and at the end (growth), after gc.

Results go to bench/results/soak_window[-paced]-<hardware>.json (with the machine's load average:
the numbers scale with how busy the CPU is) and a table is printed last. A benchmark,
not a test: targets are p99 handling < 50 ms and < 50 MB growth.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
WARMUP_STEPS = 2000  # at most a fifth of the run
HEARTBEAT_MS = 20


def make_events(steps: int):
    """The event stream of a long run on a CUDA GPU (VRAM fields set), in order."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.errors import FailureCause  # noqa: F401 - the events module's own import
    from qlora_studio.core.model.quantization import QuantizationReport
    from qlora_studio.core.runs import events as ev

    rng = random.Random(0)
    config = RunConfig().model_dump(mode="json")
    quant = QuantizationReport.planned(RunConfig().quantization)
    yield ev.RunStarted(run_dir="/tmp/soak/20261124-soak", config=config, total_steps=steps, start_step=0,
                        device="cuda:0", device_name="NVIDIA GeForce RTX 4090", train_rows=steps * 16, eval_rows=500,
                        trainable_params=41_943_040, total_params=8_072_204_288, quantization=quant,
                        predicted_peak_gb=10.4)
    tokens = 0
    for step in range(1, steps + 1):
        tokens += 16 * 900
        loss = 0.6 + 1.8 * math.exp(-step / 4000) + rng.gauss(0, 0.05)
        lr = 2e-4 * 0.5 * (1 + math.cos(math.pi * step / steps))
        metrics = ev.StepMetrics(step=step, epoch=round(step / 5000, 4), loss=loss, learning_rate=lr,
                                 grad_norm=abs(rng.gauss(0.4, 0.1)), tokens=tokens,
                                 tokens_per_s=4000 + rng.gauss(0, 150), elapsed_s=step * 3.4, micro_batch_size=4,
                                 grad_accum=4, vram_allocated_gb=9.1 + rng.random() * 0.3, vram_reserved_gb=10.2,
                                 vram_peak_gb=10.3, vram_device_used_gb=11.0)
        yield ev.StepLogged(metrics, steps)
        if step % 100 == 0:
            yield ev.EvalLogged(step, loss + 0.05, {"eval_runtime": 12.5})
        if step % 500 == 0:
            yield ev.CheckpointSaved(step, f"/tmp/soak/checkpoints/step-{step:06d}", "scheduled")
        if step % 1000 == 0:
            yield ev.Warning(f"step {step}: a synthetic warning to exercise the run log")
        if step == steps // 2:
            yield ev.Paused(step)
            yield ev.Resumed(step)
            yield ev.SettingsChanged(step, "extended", {"max_steps": [steps, steps]}, "a synthetic settings change")
        if step == steps // 3:
            yield ev.NonFiniteStep(step, float("nan"), float("nan"), "skipped",
                                   f"the loss became NaN at step {step}: its update was skipped (train.on_nan skip_step)")
    yield ev.Finished("finished", steps, steps, loss, "/tmp/soak/adapter", "/tmp/soak/20261124-soak", steps * 3.4, 10.3)


def rss_mb() -> float:
    import psutil  # installed with accelerate

    return psutil.Process().memory_info().rss / 2**20


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def hardware() -> dict:
    import platform

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        ram = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        ram = None
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "ram_gb": ram, "platform": platform.platform(),
            "qt_platform": os.environ.get("QT_QPA_PLATFORM", "")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--in-flight", type=int, default=256, help="most events queued at once")
    parser.add_argument("--rate", type=float, default=0, help="events a second (0: as fast as the window takes them)")
    parser.add_argument("--out", help="results folder (default bench/results)")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="qlora-studio-soak-"))
    os.environ["QLORA_STUDIO_SETTINGS"] = str(work / "settings.ini")
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny_llama

    from PySide6.QtCore import QEventLoop, QObject, QThread, QTimer, Signal, Slot

    from qlora_studio.gui.app import create_app
    from qlora_studio.gui.main_window import MONITOR, MainWindow
    from qlora_studio.gui.settings import Settings
    from common import save

    app = create_app()
    import pyqtgraph as pg

    # Each chart's paint, timed by wrapping pyqtgraph's own method (before the charts exist: Qt keeps
    # a widget's Python override once it has called it). The chart code itself is unchanged.
    paints: list[float] = []
    real_paint = pg.GraphicsView.paintEvent

    def timed_paint(view, event):
        began = time.perf_counter()
        real_paint(view, event)
        if measuring[0]:
            paints.append((time.perf_counter() - began) * 1000)

    pg.GraphicsView.paintEvent = timed_paint
    measuring = [False]
    model = build_tiny_llama(work / "tiny-llama")  # the setup page reads a small local model, not the demo's
    settings = Settings()
    settings.set("setup/model", str(model))
    settings.set("setup/output_dir", str(work / "runs"))
    window = MainWindow(settings)
    window.resize(1400, 900)
    window.show()

    def spin(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    tasks = [window.setup.xray.runner, window.setup.memory.estimator, window.setup.model.info_task]
    deadline = time.monotonic() + 120  # the setup page's first model info, X-ray and estimate finish first
    spin(1000)
    while time.monotonic() < deadline and any(task.busy or task.scheduled for task in tasks):
        spin(200)
    spin(500)
    window.tabs.setCurrentIndex(MONITOR)
    window.monitor.begin_live("soak")
    spin(300)

    events = list(make_events(args.steps))
    warmup = min(WARMUP_STEPS, args.steps // 5)
    emitted_at: list[float] = [0.0] * len(events)
    room = threading.Semaphore(args.in_flight)

    class Producer(QObject):
        event = Signal(object)

        @Slot()
        def run(self) -> None:
            start = time.perf_counter()
            for index, event in enumerate(events):
                if args.rate:
                    wait = start + index / args.rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                room.acquire()
                emitted_at[index] = time.perf_counter()
                self.event.emit(event)

    handling: dict[str, list[float]] = defaultdict(list)
    delivery: list[float] = []
    frames: list[float] = []
    memory: dict[str, float] = {}
    done = QEventLoop()
    state = {"index": 0, "last_tick": None, "gaps": []}

    class Relay(QObject):
        @Slot(object)
        def on_event(self, event) -> None:
            index = state["index"]
            state["index"] += 1
            began = time.perf_counter()
            window._on_event(event)  # the window's own handler, as the training controller calls it
            ended = time.perf_counter()
            room.release()
            handling[type(event).__name__].append((ended - began) * 1000)
            delivery.append((ended - emitted_at[index]) * 1000)
            step = getattr(getattr(event, "metrics", None), "step", None)
            if step == warmup:
                measuring[0] = False  # our own full collection, for a clean memory figure, is not the window's
                gc.collect()
                memory["after_warmup_mb"] = rss_mb()
                measuring[0] = True
            if index == len(events) - 1:
                done.quit()

    board = window.monitor.board  # time each redraw frame without touching the chart code
    board.timer.timeout.disconnect(board.flush)

    def timed_flush() -> None:
        began = time.perf_counter()
        board.flush()
        frames.append((time.perf_counter() - began) * 1000)

    board.timer.timeout.connect(timed_flush)
    collections: dict[int, list[float]] = defaultdict(list)
    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif measuring[0]:
            collections[info["generation"]].append((time.perf_counter() - gc_started[0]) * 1000)

    gc.callbacks.append(on_gc)

    def tick() -> None:
        now = time.perf_counter()
        if state["last_tick"] is not None:
            state["gaps"].append((now - state["last_tick"]) * 1000)
        state["last_tick"] = now

    heartbeat = QTimer()
    heartbeat.setInterval(HEARTBEAT_MS)
    heartbeat.timeout.connect(tick)

    gc.collect()
    memory["before_mb"] = rss_mb()
    load_before = round(os.getloadavg()[0], 2)
    relay = Relay()
    producer = Producer()
    thread = QThread()
    producer.moveToThread(thread)
    producer.event.connect(relay.on_event)  # queued: the producer lives on another thread
    thread.started.connect(producer.run)
    heartbeat.start()
    measuring[0] = True
    began = time.perf_counter()
    thread.start()
    done.exec()
    wall = time.perf_counter() - began
    measuring[0] = False
    heartbeat.stop()
    thread.quit()
    thread.wait()
    spin(300)
    gc.collect()
    memory["end_mb"] = rss_mb()

    steps_handled = handling["StepLogged"]
    all_handled = [v for values in handling.values() for v in values]
    gaps = state["gaps"]
    result = {
        "steps": args.steps,
        "events": len(events),
        "in_flight": args.in_flight,
        "rate_per_s": args.rate or "as fast as handled",
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "wall_s": round(wall, 2),
        "events_per_s": round(len(events) / wall, 1),
        "handling_ms": {"p50": round(percentile(all_handled, 50), 3), "p99": round(percentile(all_handled, 99), 3),
                        "max": round(max(all_handled), 2)},
        "handling_ms_by_kind": {kind: {"n": len(v), "p50": round(percentile(v, 50), 3), "p99": round(percentile(v, 99), 3),
                                       "max": round(max(v), 2)} for kind, v in sorted(handling.items())},
        "step_handling_ms": {"p50": round(percentile(steps_handled, 50), 3),
                             "p99": round(percentile(steps_handled, 99), 3)},
        "delivery_ms": {"p50": round(percentile(delivery, 50), 2), "p99": round(percentile(delivery, 99), 2),
                        "max": round(max(delivery), 1)},
        "heartbeat_gap_ms": {"p50": round(percentile(gaps, 50), 1), "p99": round(percentile(gaps, 99), 1),
                             "max": round(max(gaps), 1) if gaps else None},
        "redraw_frame_ms": {"n": len(frames), "p50": round(percentile(frames, 50), 2),
                            "p99": round(percentile(frames, 99), 2), "max": round(max(frames), 1) if frames else None},
        "chart_paint_ms": {"n": len(paints), "p50": round(percentile(paints, 50), 2),
                           "p99": round(percentile(paints, 99), 2), "max": round(max(paints), 1) if paints else None},
        "gc_collections": {f"gen{g}": {"n": len(v), "p50_ms": round(percentile(v, 50), 1), "max_ms": round(max(v), 1)}
                           for g, v in sorted(collections.items())},
        "memory_mb": {k: round(v, 1) for k, v in memory.items()},
        "memory_growth_mb": round(memory["end_mb"] - memory["after_warmup_mb"], 1),
        "memory_growth_from_start_mb": round(memory["end_mb"] - memory["before_mb"], 1),
        "chart_points": len(window.monitor.loss_chart.series["raw"]),
        "targets": {"handling_p99_ms": 50, "memory_growth_mb": 50},
        "hardware": hardware(),
    }
    result["meets_targets"] = result["handling_ms"]["p99"] < 50 and result["memory_growth_mb"] < 50
    assert result["chart_points"] == args.steps, "every step reached the loss chart"
    window.close()
    app.processEvents()
    save("soak-window-paced" if args.rate else "soak-window", result, Path(args.out) if args.out else None)

    pace = f"{args.rate:g} events/s" if args.rate else "as fast as handled"
    print(f"\nsoak: {args.steps:,} steps ({len(events):,} events, {pace}) in {wall:.1f} s = {result['events_per_s']:,} "
          f"events/s on {result['hardware']['cpu']} ({result['hardware']['logical_cores']} logical cores, load "
          f"{load_before} before)")
    print(f"{'measure':34} {'p50':>9} {'p99':>9} {'max':>9}")
    for name, key in (("handling per event (ms)", "handling_ms"), ("delivery, emit -> handled (ms)", "delivery_ms"),
                      ("heartbeat gap, 20 ms timer (ms)", "heartbeat_gap_ms"), ("chart setData frame (ms)", "redraw_frame_ms"),
                      ("one chart's paint (ms)", "chart_paint_ms")):
        row = result[key]
        print(f"{name:34} {row['p50']:>9} {row['p99']:>9} {row['max']:>9}")
    for generation, row in result["gc_collections"].items():
        print(f"{'gc ' + generation + ' collections':34} {row['p50_ms']:>9} {'':>9} {row['max_ms']:>9}   ({row['n']} runs)")
    print(f"{'memory growth after warm-up (MB)':34} {result['memory_growth_mb']:>9}   "
          f"(from {memory['after_warmup_mb']:.0f} to {memory['end_mb']:.0f} MB RSS)")
    print(f"targets (p99 handling < 50 ms, growth < 50 MB): {'met' if result['meets_targets'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
