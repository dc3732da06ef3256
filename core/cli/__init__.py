"""The headless command line: `qlora-studio <command>` (the launcher opens the window when no
command is given). User mistakes end with one line on stderr and a non-zero exit code, never a
traceback (`--debug` shows one)."""

from __future__ import annotations

import argparse
import sys

from qlora_studio.core.config.methods import METHODS
from qlora_studio.core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    from qlora_studio.core.model.devices import configure_cuda_allocator

    configure_cuda_allocator()  # before anything initializes CUDA
    if getattr(args, "allow_pickle", False):
        from qlora_studio.core.model.consent import allow_pickle

        allow_pickle()  # this command only: the yes is never written into a config
    if getattr(args, "allow_hub_kernels", False):
        from qlora_studio.core.hub_kernels import allow_hub_kernels

        allow_hub_kernels()
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        if getattr(args, "debug", False):
            raise
        from qlora_studio.core.redact import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exc.cause.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    from qlora_studio.core.cli import after_commands as a
    from qlora_studio.core.cli import commands as c

    parser = argparse.ArgumentParser(
        prog="qlora-studio",
        description="Fine-tune an LLM with 4-bit QLoRA on one GPU. Without a command, the window opens.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {c.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Flags several commands share, declared once.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show tracebacks")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON object")
    config_file = argparse.ArgumentParser(add_help=False)
    config_file.add_argument("config", nargs="?", help="config YAML (default: the demo)")
    config_file.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override a config key, e.g. --set train.max_steps=50 (repeatable)")
    pickles = argparse.ArgumentParser(add_help=False)  # consent to code that is not ours
    pickles.add_argument("--allow-pickle", action="store_true",
                         help="load pickled .bin/.pt weights, which can run code (without it only safetensors load)")
    pickles.add_argument("--allow-hub-kernels", action="store_true",
                         help="let libraries download compiled kernels from the Hugging Face Hub and run them "
                              "(without it their local kernels run)")
    gpu_budget = argparse.ArgumentParser(add_help=False)
    gpu_budget.add_argument("--gpu-gb", type=float, help="card size in GiB (default: the detected GPU)")

    def command(name: str, handler, help_text: str, parents=()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=list(parents))
        p.set_defaults(handler=handler)
        return p

    command("gui", _window_hint, "open the window (the same as no command)").add_argument("config", nargs="?")

    demo = argparse.ArgumentParser(add_help=False)
    demo.add_argument("--demo", nargs="?", const="sft", choices=METHODS, metavar="METHOD",
                      help="the demo: SmolLM2-135M-Instruct on a bundled task, the dates (sft, the default; dpo, orpo "
                           "and kto on preferred and rejected dates) or small sums (grpo, the exact_match reward)")
    p = command("train", c.cmd_train, "train a LoRA adapter from a config file", (config_file, demo, debug, pickles))
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder from its latest checkpoint")
    p.add_argument("--extend", type=int, metavar="N", help="with --resume: train N steps beyond the planned total")
    p.add_argument("--oom-shrink", action="store_true",
                   help="at micro-batch 1, let an out-of-memory error turn on checkpointing or shorten max_length")
    p.add_argument("--processes", type=int, metavar="N", help="data-parallel processes (one per GPU; gloo on CPU)")
    p.add_argument("--json-events", action="store_true", help="print every event as one JSON line instead of a progress bar")
    p.add_argument("--in-child", action="store_true",
                   help="train in a supervised child process, as the window does (a native crash is a failed run)")

    p = command("inspect-data", c.cmd_inspect_data,
                "X-ray a dataset: format, rows, bad rows, token lengths, trained tokens", (as_json, debug))
    p.add_argument("--data", required=True, help="file, folder, Hub dataset id, or sample:<name>")
    p.add_argument("--model", default=None, help="model whose tokenizer and chat template to use (default: the demo model)")
    p.add_argument("--format", default="auto", help="auto | alpaca | sharegpt | messages | prompt_completion | text")
    p.add_argument("--config", help="take the data settings from this config (the flags above override it)")
    p.add_argument("--max-length", type=int, help="data.max_length")
    p.add_argument("--column", action="append", default=[], metavar="OURS=THEIRS", help="map a column, e.g. prompt=question")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip rows that do not fit instead of stopping")
    p.add_argument("--examples", type=int, default=2, help="rendered examples to show")

    command("estimate", c.cmd_estimate, "predict peak GPU memory for a config, part by part",
            (config_file, demo, gpu_budget, as_json, debug))
    p = command("fit", c.cmd_fit, "find the fastest settings that fit a GPU budget, keeping the effective batch",
                (config_file, demo, gpu_budget, as_json, debug))
    p.add_argument("--write", metavar="OUT.yaml", help="save the fitted config here")

    p = command("runs", c.cmd_runs, "list the runs in an output folder", (as_json,))
    p.add_argument("output_dir", nargs="?", help="a runs folder (default: the one the window uses too; see `env`)")

    p = command("generate", a.cmd_generate, "answer a prompt with a trained adapter (checks that it stops)",
                (debug, pickles))
    p.add_argument("run_dir", help="a run folder (its adapter/) or an adapter folder")
    p.add_argument("prompt", nargs="+", help="the user message")
    p.add_argument("--max-new-tokens", type=int, default=128)

    checkpoint = argparse.ArgumentParser(add_help=False)
    checkpoint.add_argument("run_dir", help="a run folder (its final adapter/), a checkpoint folder or an adapter folder")
    checkpoint.add_argument("--checkpoint", metavar="step-N", help="a checkpoint of the run instead of its final adapter")

    p = command("evaluate", a.cmd_evaluate, "score base vs tuned: exact match, stop rate, validation loss; saved in the run",
                (checkpoint, as_json, debug, pickles))
    p.add_argument("--data", help="rows to score (default: the run's own validation split), e.g. sample:dates-eval")
    p.add_argument("--limit", type=int, help="score only the first N rows")
    p.add_argument("--max-new-tokens", type=int, default=64)

    p = command("chat", a.cmd_chat, "chat with a trained adapter (or its base), replies streamed; --prompt for one reply",
                (checkpoint, debug, pickles))
    p.add_argument("--base", action="store_true", help="the base model (the adapter switched off)")
    p.add_argument("--prompt", help="answer this one message and exit (no conversation)")
    p.add_argument("--system", help="system prompt (default: the run's data.system_prompt)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); e.g. 0.7 to sample")
    p.add_argument("--top-p", type=float, default=1.0)

    from qlora_studio.core.after.export import EXPORT_TARGETS, GGUF_QUANTS

    p = command("export", a.cmd_export, "export a run: its adapter, a merged model, a GGUF file or an Ollama folder",
                (checkpoint, debug, pickles))
    p.add_argument("--to", required=True, choices=EXPORT_TARGETS)
    p.add_argument("--out", help="target folder (a .gguf file for --to gguf); default: exports/ inside the run folder")
    p.add_argument("--quant", default="q8_0", choices=GGUF_QUANTS,
                   help="GGUF tensor type (gguf, ollama); q4_k_m, q5_k_m and q6_k need the gguf extra (llama.cpp)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="merged weights")
    p.add_argument("--system", help="the Modelfile's SYSTEM prompt (ollama; default: the chat template's own)")
    p.add_argument("--check", action="store_true",
                   help="then answer the run's held-out rows (or probes) with the run and with the export, side by side")
    p.add_argument("--check-rows", type=int, default=100, help="rows the parity check answers (default 100)")
    p.add_argument("--check-data", help="a file of rows for the parity check (default: the run's validation split)")

    p = command("init", c.cmd_init, "write a documented config file to start from (the demo, every key explained)")
    p.add_argument("path", nargs="?", default="qlora-studio.yaml", help="where to write it; - prints it")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = command("models", c.cmd_models, "list the models on this computer (Hugging Face cache, .gguf files) with "
                "size, architecture and parameters", (as_json,))
    p.add_argument("--gguf-folder", action="append", default=[], metavar="DIR", help="also list the .gguf files here")
    p = command("download", c.cmd_download, "download a Hub model into the Hugging Face cache, with progress", (debug,))
    p.add_argument("repo_id", help="org/name")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--all-files", action="store_true",
                   help="every file of the repo, not only config, tokenizer and safetensors weights")

    p = command("import-config", c.cmd_import_config,
                "convert an axolotl or LLaMA-Factory QLoRA config, listing every key not carried over", (debug,))
    p.add_argument("file", help="the axolotl or LLaMA-Factory YAML file")
    p.add_argument("--out", metavar="my.yaml", help="write the config here (default: print it)")
    p.add_argument("--tool", choices=("axolotl", "llamafactory"), help="which tool wrote it (default: detected)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")

    command("env", c.cmd_env, "show the GPU, driver and library versions this install sees")
    # The child a supervisor starts (training.supervisor); listed nowhere: a frozen app has no `python -m`.
    worker = sub.add_parser("worker")
    worker.add_argument("run_dir")
    worker.set_defaults(handler=_train_worker)
    return parser


def _train_worker(args: argparse.Namespace) -> int:
    from qlora_studio.core.training.worker import main as worker_main

    return worker_main(args.run_dir)


def _window_hint(args: argparse.Namespace) -> int:  # noqa: ARG001
    raise UserError("the window opens from the `qlora-studio` command (this module is its headless part)")

