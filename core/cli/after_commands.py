"""The commands that use a trained run: evaluate, generate, chat, export (with its parity check)."""

from __future__ import annotations

import argparse
import json
import sys

from qlora_studio.core.cli.printers import progress_printer
from qlora_studio.core.errors import UserError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from qlora_studio.core.after.evaluation import evaluate, save_evaluation
    from qlora_studio.core.after.scores import METRICS
    from qlora_studio.core.after.inference import load_session
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    session = load_session(args.run_dir, args.checkpoint)
    result = evaluate(session, args.data, limit=args.limit, max_new_tokens=args.max_new_tokens,
                      progress=None if args.json else progress_printer())
    saved = save_evaluation(result)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    print(f"{session.ref.name} on {result.data}: {result.rows} replies, loss on {result.loss_rows} rows")
    print(f"{'':22}{'base':>10}{'tuned':>10}")
    forms = {"percent": "{:.1%}", "loss": "{:.4f}", "ppl": "{:.2f}", "number": "{:.3f}"}
    for label, key, kind, _ in METRICS:
        cells = [getattr(s, key) if s is not None else None for s in (result.base, result.tuned)]
        if key in ("ranks_chosen", "reward") and all(c is None for c in cells):
            continue  # the rows of other methods
        print(f"{label.lower():22}" + "".join(f"{forms[kind].format(c) if c is not None else '-':>10}" for c in cells))
    for example in result.examples[:3]:
        print(f"  {example['prompt'][:50]!r}: tuned {example['tuned'][:30]!r}, base {example['base'][:30]!r}"
              f" (expected {example['reference'][:30]!r})")
    if saved:
        print(f"saved in {saved}", file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from qlora_studio.core.after.inference import load_session
    from qlora_studio.core.model.generation import Sampling
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    session = load_session(args.run_dir)
    reply = session.replies([[{"role": "user", "content": " ".join(args.prompt)}]],
                            Sampling(max_new_tokens=args.max_new_tokens))[0]
    print(reply.text)
    ending = "stopped by itself (EOS)" if reply.stopped else f"hit --max-new-tokens {args.max_new_tokens} without stopping"
    print(f"[{reply.new_tokens} tokens, {ending}]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from qlora_studio.core.after.inference import load_session
    from qlora_studio.core.cli.chat import chat_loop, stream_reply
    from qlora_studio.core.model.generation import Sampling
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--temperature must be 0 (greedy) or more, and --top-p between 0 and 1")
    session = load_session(args.run_dir, args.checkpoint)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
    system = args.system if args.system is not None else session.config.data.system_prompt
    if args.prompt is None:
        return chat_loop(session, sampling, args.base, system)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": args.prompt}]
    reply = stream_reply(session, messages, sampling, args.base, sys.stdout)
    ending = "stopped by itself" if reply.stopped else f"hit --max-new-tokens {args.max_new_tokens}"
    print(f"[{'base' if args.base else 'tuned'}, {reply.new_tokens} tokens, {ending}]", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from qlora_studio.core.after.adapters import locate_adapter
    from qlora_studio.core.after.export.merge import MERGE_DTYPES
    from qlora_studio.core.after.export.run import default_output, export_run
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    ref = locate_adapter(args.run_dir, args.checkpoint)
    if args.check and args.to == "adapter":
        raise UserError("--check compares an export with the run; an adapter export is the run's own adapter")
    out = args.out or default_output(ref, args.to, args.quant)
    path = export_run(ref, args.to, out, quant=args.quant, dtype=MERGE_DTYPES[args.dtype], system_prompt=args.system,
                      progress=progress_printer())
    print(path)
    if args.check:
        from qlora_studio.core.after.export.parity import check_parity, save_parity

        parity = check_parity(ref, path, args.to, data=args.check_data, limit=args.check_rows,
                              progress=progress_printer())
        save_parity(parity, ref.run_dir)
        print("\n".join(parity.lines()))
    if args.to == "ollama":
        print(f"import it with: ollama create NAME -f {path / 'Modelfile'}", file=sys.stderr)
    elif args.to == "gguf":
        print(f"run it with: llama-cli -m {path} -cnv  (or load it in LM Studio)", file=sys.stderr)
    return 0
