"""Several GPUs (needs a multi-GPU machine from the device tool; withheld so far):

  scaling   the 7B-shape run of gpu_7b.py on 1 and on N GPUs (DDP, one 4-bit model per GPU):
            global tokens/s and the speed-up (target >= 1.8x on 2 GPUs)
  fsdp      FSDP-QLoRA of a Llama-2-70B shape sharded across all GPUs: tokens/s and peak per GPU
    python bench/gpu_multi.py [--parts scaling,fsdp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from common import fixed_length_rows, save, shape_folder

SEQ = 2048


def train(config: dict, work: Path, name: str, processes: int) -> dict:
    config = {**config, "run_name": name, "output_dir": str(work / "runs")}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "qlora_studio.core.cli", "train", str(path), "--processes", str(processes),
               "--json-events"]
    done = subprocess.run(command, capture_output=True, text=True)
    metrics = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return {"processes": processes, "returncode": done.returncode, "stderr_tail": done.stderr[-1500:],
            "tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in metrics[2:]),
            "peak_allocated_gb_rank0": max(m.get("vram_peak_gb", 0) for m in metrics)}


def main() -> None:
    import torch

    from tiny import build_tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="scaling,fsdp")
    parser.add_argument("--work", default="/tmp/bench-multi")
    args = parser.parse_args()
    work = Path(args.work)
    gpus = torch.cuda.device_count()
    data = fixed_length_rows(work / "rows.jsonl", 256, SEQ, build_tokenizer())
    results = {"gpus": gpus}
    if "scaling" in args.parts:
        folder = shape_folder("llama-2-7b", work)
        base = {"model": {"name_or_path": str(folder), "random_init": True},
                "data": {"path": str(data), "max_length": SEQ, "validation_split": 0, "format": "text"},
                "train": {"micro_batch_size": 4, "grad_accum": 1, "max_steps": 12, "save_every_steps": 10**6}}
        one = train(base, work, "ddp-1", 1)
        many = train(base, work, f"ddp-{gpus}", gpus)
        results["scaling"] = {"one": one, "many": many,
                              "speedup": many["tokens_per_s_median"] / one["tokens_per_s_median"]}
    if "fsdp" in args.parts:
        folder = shape_folder("llama-2-70b", work)
        config = {"model": {"name_or_path": str(folder), "random_init": True},
                  "data": {"path": str(data), "max_length": SEQ, "validation_split": 0, "format": "text"},
                  "train": {"micro_batch_size": 1, "grad_accum": 1, "max_steps": 6, "save_every_steps": 10**6},
                  "distributed": {"strategy": "fsdp"}}
        results["fsdp"] = train(config, work, "fsdp-70b", gpus)
    save(f"multi-gpu-x{gpus}", results)
    print(json.dumps({k: (v if k != "scaling" else {"speedup": v["speedup"]}) for k, v in results.items()}, indent=1,
                     default=str)[:2000])


if __name__ == "__main__":
    main()
