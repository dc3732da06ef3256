"""What the window costs: real tokens/s of the same run driven through the window vs headless.

The same config is trained alternately (ABBA: headless, window, window, headless, ...) from one
process: headless is `run_training` on the main thread, as the CLI runs it; window is the real
`MainWindow` (offscreen) whose Setup page holds the config, started through its Start action: the
run trains in the child process the window supervises, with live charts while the Qt event loop
runs (`QEventLoop.exec`, what `app.exec()` runs). Throughput is measured from each run's
metrics.jsonl on the steps after warm-up, by wall clock between logged steps. The window arms also
record the GUI thread's busy time and the chart frames it drew; their CPU time is the window
process's alone (the training is the child's).

On a GPU, before the ABBA rounds (so this process has no CUDA context of its own yet), one window
run samples `nvidia-smi` at its last step and again after the run: the child's memory while it
trains, and what the window's process holds once the child has exited (the GPU handed back).

    python bench/window_vs_headless.py                # GPU: Llama-3.2-1B and Llama-3.1-8B shapes,
                                                      # random weights, 2,048 x 4 rows, Liger on
    python bench/window_vs_headless.py --cpu          # tiny Llama on the CPU, same method
    python bench/window_vs_headless.py --profile      # + py-spy (if installed): where the GUI thread holds the GIL

Prints a short table last and saves bench/results/window-vs-headless[-cpu]-<gpu>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import fixed_length_rows, save, shape_folder  # noqa: E402

GPU_SHAPES = ("llama-3.2-1b", "llama-3.1-8b")
# steps per run on the GPU: enough after warm-up for a stable rate, few enough that 8 runs fit ~6 minutes
GPU_STEPS = {"llama-3.2-1b": 40, "llama-3.1-8b": 20}


def run_config(folder: Path, data: Path, runs: Path, name: str, *, seq: int, batch: int, steps: int, cpu: bool):
    from qlora_studio.core.config import RunConfig

    return RunConfig.model_validate({
        "run_name": name,
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": str(data), "max_length": seq, "validation_split": 0, "format": "text"},
        "train": {"micro_batch_size": batch, "grad_accum": 1, "max_steps": steps, "save_every_steps": 10**6,
                  "warmup_ratio": 0.0, "learning_rate": 1e-4, "liger_kernels": "off" if cpu else "on",
                  "device": "cpu" if cpu else "cuda"},
        "output_dir": str(runs),
    })


def throughput(run_dir: str, warmup: int) -> dict:
    """Real tokens/s between the end of step `warmup` and the last step, by wall clock."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    measured = [r for r in rows if r["step"] >= warmup]
    first, last = measured[0], measured[-1]
    return {"steps": last["step"], "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]),
            "step_tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in measured[1:]),
            "measured_s": last["elapsed_s"] - first["elapsed_s"],
            "peak_vram_gb": max((r.get("vram_peak_gb") or 0 for r in rows), default=None)}


def cpu_marks(marks: dict, warmup: int, last: int):
    """An event sink that notes the process's CPU time at the first and the last measured step."""
    from qlora_studio.core.runs import events as ev

    def note(event) -> None:
        if isinstance(event, ev.StepLogged) and event.metrics.step in (warmup, last):
            marks["first" if event.metrics.step == warmup else "last"] = (
                time.thread_time(), time.monotonic(), time.process_time(), event.metrics.tokens)

    return note


def cpu_per_token(marks: dict) -> float:
    """Process CPU seconds per 1,000 measured tokens (all threads: training, GUI, torch's pool)."""
    (_, _, p0, t0), (_, _, p1, t1) = marks["first"], marks["last"]
    return 1000 * (p1 - p0) / max(t1 - t0, 1)


def headless_arm(config, warmup: int) -> dict:
    from qlora_studio.core.training.runner import run_training

    marks: dict = {}
    # as in the CLI: Python's automatic garbage collection on (the window's QApplication turned it
    # off in favour of its GUI-thread collector, whose timer does not run while this arm trains)
    collecting = gc.isenabled()
    gc.enable()
    try:
        result = run_training(config, cpu_marks(marks, warmup, config.train.max_steps))
    finally:
        if not collecting:
            gc.disable()
    assert result.status == "finished", result.error
    return {"arm": "headless", **throughput(result.run_dir, warmup), "cpu_s_per_1k_tokens": cpu_per_token(marks)}


class WindowDriver:
    """The real main window, offscreen, driven the way a user drives it: Setup, then Start."""

    def __init__(self, work: Path, size=(1600, 1000)):
        from PySide6.QtCore import QSettings

        from qlora_studio.gui.app import create_app
        from qlora_studio.gui.settings import Settings

        self.app = create_app()
        from qlora_studio.gui.main_window import MainWindow

        settings = Settings(QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat))
        settings.set("setup/output_dir", str(work / "runs"))
        self.window = MainWindow(settings)
        self.window.resize(*size)
        self.window.show()
        self.settle_setup()  # its start-up work (GPU probe, the demo's X-ray and estimate) is over

    def wait(self, done, timeout_s: float = 600) -> None:
        """Run the event loop until `done()` (polled every 50 ms; a bench, not a test)."""
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        timer = QTimer()
        timer.setInterval(50)
        deadline = time.monotonic() + timeout_s
        timer.timeout.connect(lambda: (done() or time.monotonic() > deadline) and loop.quit())
        timer.start()
        loop.exec()
        timer.stop()
        if not done():
            raise TimeoutError("the window did not get there in time")

    def settle_setup(self) -> None:
        """The Setup page's background work for the new config (X-ray, estimate, model info) is done."""
        from qlora_studio.gui.workers.tasks import DebouncedTask, TaskRunner

        runners = self.window.findChildren(TaskRunner)
        self.wait(lambda: not any(r.busy or (isinstance(r, DebouncedTask) and r.scheduled) for r in runners))

    def arm(self, config, warmup: int, vram: dict | None = None) -> dict:
        from PySide6.QtCore import QEventLoop

        from qlora_studio.core.runs import events as ev

        window, board = self.window, self.window.monitor.board
        window.setup.set_config(config)
        self.settle_setup()
        marks: dict = {}
        note = cpu_marks(marks, warmup, config.train.max_steps)
        frames: dict = {}

        def on_event(event) -> None:  # on the GUI thread: its CPU time, the frames it drew
            note(event)
            if isinstance(event, ev.StepLogged):
                frames[event.metrics.step] = board.frames
                if vram is not None and event.metrics.step == config.train.max_steps:
                    vram["during"] = gpu_processes()

        results: list = []
        loop = QEventLoop()
        window.controller.event.connect(on_event)
        window.run_ended.connect(results.append)
        window.run_ended.connect(loop.quit)
        assert window.setup.valid, window.setup.problem_label.text()
        window.start_action.trigger()  # Start, as a user clicks it
        loop.exec()  # what app.exec() runs: the GUI thread idles in Qt until something needs it
        window.controller.event.disconnect(on_event)
        window.run_ended.disconnect(results.append)
        window.run_ended.disconnect(loop.quit)
        result = results[0]
        assert result.status == "finished", result.error
        (cpu0, wall0, _, _), (cpu1, wall1, _, _) = marks["first"], marks["last"]
        return {"arm": "window", **throughput(result.run_dir, warmup), "cpu_s_per_1k_tokens": cpu_per_token(marks),
                "gui_busy_fraction": (cpu1 - cpu0) / (wall1 - wall0),
                "frames_per_s": (frames[config.train.max_steps] - frames[warmup]) / (wall1 - wall0),
                "vram_points": window.monitor.vram_chart.series["allocated"].n,
                "predicted_peak_shown": window.monitor.vram_chart.predicted_peak_gb}


def gpu_processes() -> dict:
    """nvidia-smi's view: MiB used per process on the GPU, and the card's total used."""
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout
    used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout
    per_pid = {int(p): int(m) for p, m in (line.split(",") for line in apps.splitlines() if line.strip())}
    return {"per_pid_mib": per_pid, "gpu_used_mib": int(used.split()[0]) if used.strip() else None}


def gpu_given_back(driver, config, warmup: int) -> dict:
    """One window run: the GPU memory while its child trains, and once the run has ended."""
    vram: dict = {}
    run = driver.arm(config, warmup, vram)
    time.sleep(2)
    vram["after"] = gpu_processes()
    me = os.getpid()
    during = vram["during"]["per_pid_mib"]
    return {"window_pid": me, "child_mib_during": sum(m for p, m in during.items() if p != me),
            "window_mib_during": during.get(me, 0), "window_mib_after": vram["after"]["per_pid_mib"].get(me, 0),
            "gpu_used_mib_during": vram["during"]["gpu_used_mib"], "gpu_used_mib_after": vram["after"]["gpu_used_mib"],
            "processes_after": vram["after"]["per_pid_mib"], "tokens_per_s": run["tokens_per_s"]}


def py_spy_gui_share(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy sampling this process (threads that hold the GIL only, without pausing it)."""
    # pip --target installs (bench/gpu_setup.sh) put the binary in <site>/bin, off PATH
    exe = shutil.which("py-spy") or next((str(Path(p) / "bin" / "py-spy") for p in sys.path
                                         if p and (Path(p) / "bin" / "py-spy").is_file()), None)
    if exe is None:
        print("py-spy not found: pip install py-spy (profiling skipped)")
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--threads", "--gil", "--nonblocking", "--rate", "250",
                             "--duration", str(int(seconds)), "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, gui_thread: int, top: int = 12) -> dict:
    """Share of GIL-holding samples taken on the GUI thread, and its hottest functions (self time)."""
    samples = Counter()
    functions = Counter()
    total = 0
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        thread = frames[0]
        samples[thread] += n
        if f"({gui_thread})" in thread:
            functions[frames[-1]] += n
    gui = sum(n for t, n in samples.items() if f"({gui_thread})" in t)
    return {"gil_samples": total, "gui_thread_share": gui / total if total else None,
            "threads": dict(samples.most_common(6)), "gui_hot": functions.most_common(top)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny Llama on the CPU (what a machine without a GPU can measure)")
    parser.add_argument("--shapes", default=",".join(GPU_SHAPES))
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds: each gives one run of each arm")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per shape)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the rate (default 4 GPU, 20 CPU)")
    parser.add_argument("--profile", action="store_true", help="py-spy the last window run of each shape")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()

    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    import warnings

    warnings.filterwarnings("ignore", message=r"bitsandbytes::.*autograd kernel")  # CPU 4-bit backward, each step
    from tiny import build_tokenizer

    if args.cpu:
        import torch

        torch.set_num_threads(1)  # one training thread, as on a GPU: what the GUI thread takes shows, not OpenMP's spinning
    work = Path(args.work or tempfile.mkdtemp(prefix="window-vs-headless-"))
    work.mkdir(parents=True, exist_ok=True)
    shapes = ["tiny"] if args.cpu else args.shapes.split(",")
    seq, batch = (128, 4) if args.cpu else (2048, 4)
    warmup = args.warmup if args.warmup is not None else (20 if args.cpu else 4)
    data = fixed_length_rows(work / f"rows-{seq}.jsonl", 256 if args.cpu else 96, seq, build_tokenizer())
    folders = {shape: shape_folder(shape, work) for shape in shapes}
    from qlora_studio.core.training.runner import run_training  # noqa: F401 - imported here, before the window's threads do
    driver = WindowDriver(work)
    gui_thread = threading.get_native_id()
    results: dict = {"method": "ABBA alternation in one process; tokens/s by wall clock after warm-up",
                     "cpu": cpu_model(), "seq_len": seq, "micro_batch": batch, "warmup_steps": warmup, "shapes": {}}
    began = time.time()
    if not args.cpu:  # first, while this process has no CUDA context of its own
        shape = shapes[0]
        config = run_config(folders[shape], data, work / "runs", f"{shape}-vram", seq=seq, batch=batch,
                            steps=warmup + 6, cpu=False)
        results["gpu_given_back"] = gpu_given_back(driver, config, warmup)
        print(json.dumps({"gpu_given_back": results["gpu_given_back"]}), flush=True)
    for shape in shapes:
        folder = folders[shape]
        steps = args.steps or (120 if args.cpu else GPU_STEPS.get(shape, 30))
        runs = []
        order = [a for r in range(args.rounds) for a in (("headless", "window") if r % 2 == 0 else ("window", "headless"))]
        for i, arm in enumerate(order):
            config = run_config(folder, data, work / "runs", f"{shape}-{i:02d}-{arm}", seq=seq, batch=batch, steps=steps,
                                cpu=args.cpu)
            profiler = None
            if arm == "window" and args.profile and i == max(j for j, a in enumerate(order) if a == "window"):
                profiler = py_spy_gui_share(os.getpid(), 3600, work / f"profile-{shape}.txt")
            started = time.time()
            run = headless_arm(config, warmup) if arm == "headless" else driver.arm(config, warmup)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # py-spy writes its samples on Ctrl+C
                profiler.wait()
            run["run_s"] = round(time.time() - started, 1)
            runs.append(run)
            print(json.dumps({"shape": shape, **run}), flush=True)
        head = [r["tokens_per_s"] for r in runs if r["arm"] == "headless"]
        win = [r["tokens_per_s"] for r in runs if r["arm"] == "window"]
        cpu_head = statistics.mean(r["cpu_s_per_1k_tokens"] for r in runs if r["arm"] == "headless")
        cpu_win = statistics.mean(r["cpu_s_per_1k_tokens"] for r in runs if r["arm"] == "window")
        entry = {"runs": runs, "steps": steps, "headless_tokens_per_s": statistics.mean(head),
                 "window_tokens_per_s": statistics.mean(win), "ratio": statistics.mean(win) / statistics.mean(head),
                 "cpu_ratio": cpu_head / cpu_win,
                 "gui_busy_fraction": statistics.mean(r["gui_busy_fraction"] for r in runs if r["arm"] == "window"),
                 "frames_per_s": statistics.mean(r["frames_per_s"] for r in runs if r["arm"] == "window")}
        if args.profile:
            entry["profile"] = summarize_profile(work / f"profile-{shape}.txt", gui_thread)
            print(json.dumps(entry["profile"], indent=1), flush=True)
        results["shapes"][shape] = entry
    results["total_s"] = round(time.time() - began, 1)
    from common import gpu_name

    results["environment_gpu"] = gpu_name() + ("" if not args.cpu else f", {results['cpu']}")
    saved = save("window-vs-headless" + ("-cpu" if args.cpu else ""), results)
    if os.environ.get("OUT"):  # the device tool brings back what lies under $OUT
        shutil.copy(saved, os.environ["OUT"])
    driver.window.close()
    print(f"\n{results['environment_gpu']}")
    print(f"{'shape':14} {'headless tok/s':>15} {'window tok/s':>13} {'ratio':>7} {'rounds':>7} {'GUI busy':>9} "
          f"{'frames/s':>9}")
    for shape, e in results["shapes"].items():
        ratios = "/".join(f"{w['tokens_per_s'] / h['tokens_per_s']:.3f}" for h, w in zip(
            [r for r in e["runs"] if r["arm"] == "headless"], [r for r in e["runs"] if r["arm"] == "window"]))
        print(f"{shape:14} {e['headless_tokens_per_s']:15,.0f} {e['window_tokens_per_s']:13,.0f} {e['ratio']:7.3f} "
              f"{ratios:>7} {e['gui_busy_fraction']:9.2%} {e['frames_per_s']:9.2f}")
    given = results.get("gpu_given_back")
    if given:
        print(f"GPU memory (nvidia-smi): child {given['child_mib_during']:,} MiB while training, window process "
              f"{given['window_mib_during']} MiB during / {given['window_mib_after']} MiB after; card used "
              f"{given['gpu_used_mib_during']:,} -> {given['gpu_used_mib_after']:,} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
