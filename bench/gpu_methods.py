"""Training past SFT on a GPU: does each method learn, and does the planner predict its peak?

  learn-dpo    SmolLM2-135M-Instruct (real weights, the bundled GGUF) on sample:dates-pairs: the
               preference accuracy and margin per step, the held-out pairs' accuracy at each
               evaluation, and greedy exact match on the 100 held-out dates, base vs tuned
  learn-grpo   the same model on sample:arithmetic with the exact_match reward: the mean reward per
               step, and greedy exact match on the held-out sums, base vs tuned
  mem-dpo      the Llama-3.1-8B shape (random weights), pairs cut at data.max_length: the peak
               allocated from training start against the planner's prediction (the same number
               Setup and `qlora-studio estimate` give)
  mem-grpo     the same for GRPO, whose peak is training's or generation's KV cache

    python bench/gpu_methods.py --model SmolLM2-135M-Instruct.Q4_1.gguf [--parts learn-dpo,mem-dpo] [--smoke]
Each part runs in its own process (its own peak); the last lines are a table. --smoke: a tiny random
model and a few steps, on whatever device there is (checks the script on a CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import environment, rows_of_lengths, save, shape_folder, train_finished

PARTS = ("learn-dpo", "learn-grpo", "mem-dpo", "mem-grpo")
SHAPE = "llama-3.1-8b"
PROBE_SUMS = ["What is 17 + 25? Reply with the number only.", "What is 9 x 7? Reply with the number only.",
              "What is 64 - 28? Reply with the number only."]


def learn(part: str, args) -> dict:
    from qlora_studio.core.after.evaluation import evaluate
    from qlora_studio.core.after.inference import load_session
    from qlora_studio.core.config import RunConfig
    from qlora_studio.resources import sample_path

    model = args.model if not args.smoke else str(shape_folder("tiny", Path(args.work)))
    dpo = part == "learn-dpo"
    steps = 6 if args.smoke else (75 if dpo else args.grpo_steps)
    train = ({"method": "dpo", "micro_batch_size": 8, "grad_accum": 1, "learning_rate": args.dpo_lr, "eval_every_steps": 15,
              "dpo": {"beta": 0.1}} if dpo else
             {"method": "grpo", "micro_batch_size": 32, "grad_accum": 1, "learning_rate": args.grpo_lr,
              "grpo": {"num_generations": 8, "max_completion_length": 24, "temperature": 1.0}})
    config = RunConfig.model_validate({
        "model": {"name_or_path": model, "random_init": args.smoke},
        "data": {"path": "sample:dates-pairs" if dpo else "sample:arithmetic", "max_length": 256,
                 "validation_path": "sample:dates-pairs-eval" if dpo else None, "validation_split": 0.0},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {"max_steps": steps, "save_every_steps": 1000, "warmup_ratio": 0.05, **train},
        "output_dir": f"{args.work}/runs", "probes": [] if dpo else PROBE_SUMS,
    })
    if not dpo:  # the probes, sampled and scored at each checkpoint
        config = config.with_overrides({"train.save_every_steps": 20, "train.probe_max_new_tokens": 24})
    result, events, metrics, wall = train_finished(config)
    keys = ("rewards/accuracies", "rewards/margins") if dpo else ("reward", "completions/mean_length")
    curve = [{"step": m["step"], **{k: m["method"].get(k) for k in keys}} for m in metrics]
    evals = [{"step": e.step, "accuracy": e.metrics.get("eval_rewards/accuracies"),
              "margin": e.metrics.get("eval_rewards/margins")} for e in events if e.type == "eval"]
    session = load_session(result.run_dir)
    scored = evaluate(session, str(sample_path("dates-eval" if dpo else "arithmetic-eval")), max_new_tokens=24)
    if args.keep_runs:  # the run's records (not its weights), to replay in the window
        import shutil

        kept = Path(args.keep_runs) / f"{part}-{Path(result.run_dir).name}"
        shutil.copytree(result.run_dir, kept, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors", "tensorboard"))
    return {"part": part, "steps": result.step, "wall_s": round(wall, 1), "curve": curve, "evals": evals,
            "exact_match": {"base": scored.base.exact_match, "tuned": scored.tuned.exact_match},
            "config": config.model_dump(mode="json")}


def memory(part: str, args) -> dict:
    import torch

    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.planner.plan import estimate_config
    from qlora_studio.core.training.runner import run_training

    work = Path(args.work)
    folder = shape_folder("tiny" if args.smoke else SHAPE, work)
    from tiny import build_tokenizer

    tokenizer = build_tokenizer()
    dpo = part == "mem-dpo"
    length = 128 if args.smoke else (2048 if dpo else 512)
    def texts(tokens: int, count: int) -> list[str]:
        made = rows_of_lengths(work / f"texts-{tokens}.jsonl", [tokens] * count, tokenizer)
        return [json.loads(line)["text"] for line in made.read_text().splitlines()]

    # DPO: answers longer than max_length (cut there, so every row is max_length); GRPO: prompts that
    # nearly fill max_length with the template's tokens (rows of max_length + max_completion_length)
    prompts = texts(length // 8 if dpo else length - 32, 12)
    answers = texts(length, 24)
    rows = work / f"{part}.jsonl"
    with open(rows, "w") as fh:
        for i, prompt in enumerate(prompts):
            row = ({"prompt": prompt, "chosen": answers[i], "rejected": answers[i + 12]} if dpo else
                   {"prompt": prompt, "answer": "1"})
            fh.write(json.dumps(row) + "\n")
    train = ({"method": "dpo", "micro_batch_size": 2, "grad_accum": 1} if dpo else
             {"method": "grpo", "micro_batch_size": 8, "grad_accum": 1,
              "grpo": {"num_generations": 8, "max_completion_length": length, "temperature": 1.0,
                       "rewards": [{"preset": "length", "max_chars": 100}]}})
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": str(rows), "max_length": length, "validation_split": 0.0},
        "lora": {"r": 16, "alpha": 32},
        "train": {"max_steps": 3, "save_every_steps": 1000, "warmup_ratio": 0.0, "learning_rate": 1e-5,
                  "on_oom": "stop", **train},
        "output_dir": f"{args.work}/runs", "probes": [],
    })
    predicted = estimate_config(config, None)
    events = []
    started = time.time()
    result = run_training(config, events.append)
    begun = next((e for e in events if e.type == "run_started"), None)
    steps = [e.metrics for e in events if e.type == "step"]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"part": part, "status": result.status, "error": result.error, "wall_s": round(time.time() - started, 1),
            "peak_allocated_gb": round(peak / 2**30, 3) if peak else None,
            "step_peaks_gb": [m.vram_peak_gb for m in steps],
            "run_predicted_peak_gb": begun.predicted_peak_gb if begun else None,
            "estimate_peak_gb": round(predicted.peak_allocated_bytes / 2**30, 3),
            "estimate_notes": predicted.notes, "how": predicted.decisions,
            "tokens_per_s": [m.tokens_per_s for m in steps]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--work", default="/tmp/methods")
    parser.add_argument("--out", default=None)
    parser.add_argument("--dpo-lr", type=float, default=5e-5)
    parser.add_argument("--grpo-lr", type=float, default=5e-5)
    parser.add_argument("--grpo-steps", type=int, default=60)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--keep-runs", default=None, help="copy each learn part's run folder here, weights left out")
    parser.add_argument("--one", default=None, help="(internal) run this part here and print its JSON")
    args = parser.parse_args()
    if args.one:
        from qlora_studio.core.model.devices import configure_cuda_allocator
        from qlora_studio.core.quiet import quiet_libraries

        configure_cuda_allocator()
        quiet_libraries()
        record = (learn if args.one.startswith("learn") else memory)(args.one, args)
        print("RESULT " + json.dumps(record, default=str))
        return
    records = []
    for part in args.parts.split(","):
        command = [sys.executable, __file__, "--one", part, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(done.stdout[-3000:], done.stderr[-6000:])
            records.append({"part": part, "status": "crashed", "rc": done.returncode})
            continue
        records.append(json.loads(lines[-1][len("RESULT "):]))
    out = Path(args.out) if args.out else None
    save("methods" + ("-smoke" if args.smoke else ""), {"parts": records}, out)
    print(f"\n{environment()['gpu']}")
    for r in records:
        if r["part"].startswith("learn"):
            curve = r["curve"]
            key = "rewards/accuracies" if r["part"] == "learn-dpo" else "reward"
            first = [c[key] for c in curve[:10] if c[key] is not None]
            last = [c[key] for c in curve[-10:] if c[key] is not None]
            print(f"{r['part']:11} {key} first10 {sum(first) / max(1, len(first)):.3f} last10 "
                  f"{sum(last) / max(1, len(last)):.3f}  exact match base {r['exact_match']['base']:.3f} tuned "
                  f"{r['exact_match']['tuned']:.3f}  evals {r['evals']}  {r['wall_s']} s")
        elif "peak_allocated_gb" in r:
            print(f"{r['part']:11} {r['status']} peak {r['peak_allocated_gb']} GiB, predicted {r['estimate_peak_gb']} "
                  f"(run said {r['run_predicted_peak_gb']})  {r['wall_s']} s")
        else:
            print(r)


if __name__ == "__main__":
    main()
