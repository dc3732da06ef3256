"""Several GPUs (needs a multi-GPU machine from the device tool; withheld so far):

  scaling   the 7B-shape run of gpu_7b.py on 1 and on N GPUs (DDP, one 4-bit model per GPU):
            global tokens/s and the speed-up (target >= 1.8x on 2 GPUs)
  fsdp:S    FSDP-QLoRA of shape S (default llama-2-70b) sharded across all GPUs: tokens/s, peak on rank 0
    python bench/gpu_multi.py [--parts scaling,fsdp:llama-3.1-8b,fsdp:llama-2-70b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common import fixed_length_rows, save, shape_folder

SEQ = 2048


def train(config: dict, work: Path, name: str, processes: int, timeout: int) -> dict:
    config = {**config, "run_name": name, "output_dir": str(work / "runs")}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "qlora_studio.core.cli", "train", str(path), "--processes", str(processes),
               "--json-events"]
    started = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = "timeout", exc.stdout or "", exc.stderr or ""
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    metrics_path = work / "runs" / name / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    failed = [line for line in out.splitlines() if '"type": "failed"' in line]
    last_failure = json.loads(failed[-1]) if failed else {}
    result = {"processes": processes, "returncode": code, "wall_s": round(time.time() - started, 1),
              "steps": len(metrics), "failed": last_failure.get("reason"),
              "details": (last_failure.get("details") or "")[-6000:], "stderr_tail": err[-2000:]}
    if len(metrics) > 2:
        result.update(tokens_per_s_median=statistics.median(m["tokens_per_s"] for m in metrics[2:]),
                      peak_allocated_gb_rank0=max(m.get("vram_peak_gb", 0) for m in metrics))
    return result


def main() -> None:
    import torch

    from tiny import build_tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="scaling,fsdp:llama-2-70b")
    parser.add_argument("--work", default="/tmp/bench-multi")
    parser.add_argument("--fsdp-timeout", type=int, default=300)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    data = fixed_length_rows(work / "rows.jsonl", 256, SEQ, build_tokenizer())
    results = {"gpus": gpus}
    for part in args.parts.split(","):
        if part == "scaling":
            folder = shape_folder("llama-2-7b", work)
            base = {"model": {"name_or_path": str(folder), "random_init": True},
                    "data": {"path": str(data), "max_length": SEQ, "validation_split": 0, "format": "text"},
                    "train": {"micro_batch_size": 4, "grad_accum": 1, "max_steps": 12, "save_every_steps": 10**6}}
            one = train(base, work, "ddp-1", 1, 300)
            many = train(base, work, f"ddp-{gpus}", gpus, 300)
            speedup = (many.get("tokens_per_s_median", 0) / one["tokens_per_s_median"]
                       if one.get("tokens_per_s_median") else None)
            results["scaling"] = {"one": one, "many": many, "speedup": speedup}
            print(f"scaling: 1 GPU {one.get('tokens_per_s_median')} tok/s, {gpus} GPUs "
                  f"{many.get('tokens_per_s_median')} tok/s, speed-up {speedup}", flush=True)
        elif part.startswith("fsdp"):
            shape = part.partition(":")[2] or "llama-2-70b"
            folder = shape_folder(shape, work)
            config = {"model": {"name_or_path": str(folder), "random_init": True},
                      "data": {"path": str(data), "max_length": SEQ, "validation_split": 0, "format": "text"},
                      "train": {"micro_batch_size": 1, "grad_accum": 1, "max_steps": 6, "save_every_steps": 10**6},
                      "distributed": {"strategy": "fsdp"}}
            outcome = train(config, work, f"fsdp-{shape}", gpus, args.fsdp_timeout)
            results[f"fsdp:{shape}"] = outcome
            print(f"fsdp {shape}: {({k: v for k, v in outcome.items() if k not in ('stderr_tail', 'details')})}",
                  flush=True)
            if outcome["failed"] or outcome["returncode"] != 0:
                details = [line for line in outcome["details"].splitlines() if "Backend impl" not in line]
                print("\n".join(details[-40:]) or outcome["stderr_tail"][-1500:], flush=True)
    save(f"multi-gpu-x{gpus}", results)
    print("done")


if __name__ == "__main__":
    main()
