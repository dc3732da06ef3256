"""Where a studio step's wall-clock goes that its step timer does not see (issue #26).

The studio's per-step rate is timed between CUDA events queued with each step's work; the epoch's
wall clock (the headline of side_by_side.py) was 7-11% slower than that on the H200. This trains
the studio arm of side_by_side.py for three epochs of the same rows and records, per step: the
device time (the run's own metrics), the host's time from on_step_begin to on_step_end and from one
step's end to the next one's begin, Python's garbage collections (count and time per generation);
in epoch 1 the calls that make the host wait for the GPU (`torch.cuda.set_sync_debug_mode`, with
where they come from) and a CPU + CUDA trace of three steps: the GPU's idle gaps and what the host
ran during them. Epochs 2 and 3 are left unwatched, for their wall clock.

  python bench/step_gaps.py --workload b            # GPU machine, ~60 s
  python bench/step_gaps.py --workload b --arm studio:auto_gc   # Python's own collection schedule
  python bench/step_gaps.py --workload b --smoke    # the script on a CPU (tiny model)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side as sbs  # noqa: E402
from common import add_trainer_callback  # noqa: E402

SYNC_WATCH = (4, 6)  # steps (1-based) watched for host waits
TRACE = (7, 10)  # steps traced on CPU and GPU


class GcClock:
    """Python's collections (a gc.callbacks entry): count and seconds per generation, and a running
    total (`step_seconds`) that per-step marks take differences of."""

    def __init__(self):
        self.started: float | None = None
        self.by_generation: Counter = Counter()
        self.seconds: Counter = Counter()
        self.step_seconds = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started is not None:
            spent = time.perf_counter() - self.started
            self.by_generation[info["generation"]] += 1
            self.seconds[info["generation"]] += spent
            self.step_seconds += spent


def diagnostics(marks: list, syncs: Counter, gc_clock: GcClock, trace_out: list):
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                      + [torch.profiler.ProfilerActivity.CUDA] * cuda)

    def record_sync(message, category, filename, lineno, file=None, line=None):
        stack = [f for f in traceback.extract_stack()[:-2] if "warnings" not in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack[-7:][::-1])
        syncs[f"{str(message)[:60]} @ {where}"] += 1

    class Diagnose(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            marks.append(("epoch_begin", state.global_step, time.perf_counter(), gc_clock.step_seconds))

        def on_epoch_end(self, args, state, control, **kwargs):
            marks.append(("epoch_end", state.global_step, time.perf_counter(), gc_clock.step_seconds))

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step + 1
            if cuda and step == SYNC_WATCH[0]:
                warnings.showwarning = record_sync
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            if step == TRACE[0]:
                profiler.start()
            marks.append(("begin", step, time.perf_counter(), gc_clock.step_seconds))

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            marks.append(("end", step, time.perf_counter(), gc_clock.step_seconds))
            if cuda and step == SYNC_WATCH[1]:
                torch.cuda.set_sync_debug_mode(0)
            if step == TRACE[1]:
                if cuda:
                    torch.cuda.synchronize()
                profiler.stop()
                trace_out.extend(trace_report(profiler, TRACE[1] - TRACE[0] + 1))

    return Diagnose()


def trace_report(profiler, steps: int) -> list[str]:
    """The GPU's idle gaps over 0.5 ms and the host's top-level calls that overlapped each."""
    events = list(profiler.events())
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type.name == "CUDA")
    host = [e for e in events if e.device_type.name == "CPU"]
    if not kernels:
        return ["no CUDA kernels traced"]
    gaps, end = [], kernels[0][1]
    busy, start = 0.0, kernels[0][0]
    for a, b in kernels[1:]:
        if a > end:
            busy += end - start
            if a - end > 500:
                gaps.append((end, a))
            start = a
        end = max(end, b)
    busy += end - start
    span = end - kernels[0][0]
    lines = [f"trace of {steps} steps: GPU busy {busy / steps / 1e3:.1f} of {span / steps / 1e3:.1f} ms per step; "
             f"{len(gaps)} gaps over 0.5 ms, {sum(b - a for a, b in gaps) / steps / 1e3:.1f} ms per step"]
    by_caller: Counter = Counter()
    for a, b in gaps:
        inside = [e for e in host if e.time_range.start < b and e.time_range.end > a]
        # the host's innermost named calls in the gap tell what it was doing (python functions
        # are not traced; aten ops and CUDA runtime calls are)
        names = Counter()
        for e in inside:
            overlap = min(b, e.time_range.end) - max(a, e.time_range.start)
            names[e.name[:60]] += overlap
        top = ", ".join(f"{n} {v / 1e3:.1f}" for n, v in names.most_common(4))
        by_caller[top.split(" ")[0] if top else "nothing"] += b - a
        lines.append(f"  gap {(b - a) / 1e3:7.2f} ms: {top}")
    lines.append("gap time by the host's largest overlapping call: "
                 + ", ".join(f"{k} {v / steps / 1e3:.1f} ms/step" for k, v in by_caller.most_common(8)))
    return lines[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["a", "b"], default="b")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rows", type=int, help="rows per epoch (default: side_by_side's --quick counts)")
    parser.add_argument("--arm", default="studio", help="studio or studio:VARIANT (side_by_side.VARIANTS)")
    parser.add_argument("--work", default="/tmp/step-gaps")
    args = parser.parse_args()

    import torch

    from qlora_studio.core.model.devices import configure_cuda_allocator
    from qlora_studio.core.quiet import quiet_libraries

    configure_cuda_allocator()
    quiet_libraries()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = sbs.shape_folder("tiny" if args.smoke else sbs.SHAPE, work)
    context = 128 if args.smoke else 2048
    lengths = sbs.row_lengths(args.workload, context, 0, sbs.rows_for(args.workload, True, args.smoke, args.rows),
                              args.smoke)
    rows = sbs.make_rows(args.workload, work, context, lengths)
    marks: list = []
    syncs: Counter = Counter()
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    trace: list[str] = []
    add_trainer_callback(diagnostics(marks, syncs, gc_clock, trace))
    _, _, variant = args.arm.partition(":")
    overrides = {**sbs.VARIANTS.get(variant, {}), "train.experimental.sequential": True}
    record = sbs.arm_studio(folder, rows, context, 4, 0, work, overrides, epochs=3)
    record.update(sbs.epoch_figures(record.pop("epochs"), sum(min(n, context) for n in lengths)))

    from qlora_studio.core.runs.store import RunFolder

    run_dirs = sorted((work / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    metrics = RunFolder(run_dirs[-1]).read_metrics()
    device_s, last = {}, 0
    for m in metrics:
        device_s[m["step"]] = (m["tokens"] - last) / m["tokens_per_s"] if m["tokens_per_s"] else None
        last = m["tokens"]
    begins = {s: (t, g) for kind, s, t, g in marks if kind == "begin"}
    ends = {s: (t, g) for kind, s, t, g in marks if kind == "end"}
    epochs = [(s, t) for kind, s, t, _ in marks if kind.startswith("epoch")]
    print(f"{'step':>4} {'device ms':>9} {'host ms':>8} {'to next ms':>10} {'gc ms':>6}")
    rows_out = []
    for step in sorted(ends):
        host = (ends[step][0] - begins[step][0]) * 1e3
        nxt = (begins[step + 1][0] - ends[step][0]) * 1e3 if step + 1 in begins else None
        gc_ms = ((begins.get(step + 1, ends[step])[1]) - begins[step][1]) * 1e3
        dev = device_s.get(step)
        rows_out.append({"step": step, "device_ms": dev and round(dev * 1e3, 1), "host_ms": round(host, 1),
                         "to_next_ms": nxt and round(nxt, 1), "gc_ms": round(gc_ms, 1)})
        print(f"{step:4d} {dev * 1e3 if dev else float('nan'):9.1f} {host:8.1f} {nxt if nxt is not None else float('nan'):10.1f} "
              f"{gc_ms:6.1f}")
    print("epochs (step, host clock):", epochs)
    print("epoch clocks:", record["epochs"])
    print("garbage collections:", dict(gc_clock.by_generation),
          {g: round(s, 3) for g, s in gc_clock.seconds.items()}, "s")
    print(f"host waits for the GPU in steps {SYNC_WATCH[0]}-{SYNC_WATCH[1]}:")
    for what, n in syncs.most_common(12):
        print(f"  {n:3d} x {what}")
    print("\n".join(trace))
    out = {"workload": args.workload, "arm": args.arm, "steps": rows_out, "epochs": record["epochs"],
           "epoch2_tokens_per_s": record["epoch2_tokens_per_s"], "per_step_tokens_per_s": record["tokens_per_s"],
           "gc": {"collections": dict(gc_clock.by_generation), "seconds": dict(gc_clock.seconds)},
           "syncs": dict(syncs.most_common(20)), "trace": trace,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
