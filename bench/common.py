"""Shared pieces of the GPU benchmarks: model shapes, random-weight model folders, result files."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from shapes import SHAPES, shape_folder  # noqa: E402,F401 - re-exported for the bench scripts (tests/shapes.py)


def fixed_length_rows(path: Path, rows: int, tokens: int, tokenizer, seed: int = 0) -> Path:
    """Text rows of exactly `tokens` tokens with the EOS the pipeline appends (so batches carry no padding)."""
    return rows_of_lengths(path, [tokens] * rows, tokenizer, seed)


def rows_of_lengths(path: Path, lengths: list[int], tokenizer, seed: int = 0) -> Path:
    """Text rows of exactly these token counts, EOS included (the pipeline appends it)."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "date", "March", "2021", "ISO", "format", "reply", "token", "memory",
             "the", "a", "of", "to", "1", "2", "3", "day"]
    # ByteLevel pre-tokenization splits at spaces, so a text's length is the sum of its words' lengths.
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False).input_ids) for w in words}
    singles = [w for w, c in cost.items() if c == 1]
    start = len(tokenizer("the", add_special_tokens=False).input_ids)
    with open(path, "w", encoding="utf-8") as fh:
        for tokens in lengths:
            left = tokens - 1 - start
            parts = ["the"]
            while left > 0:
                word = rng.choice(words if left > 4 else singles)
                if cost[word] <= left:
                    parts.append(word)
                    left -= cost[word]
            fh.write(json.dumps({"text": " ".join(parts)}) + "\n")
    return path


def chat_lengths(rows: int, median: int = 880, sigma: float = 0.6, longest: int = 2048, shortest: int = 32,
                 seed: int = 0) -> list[int]:
    """Row lengths of a chat dataset with a long tail, drawn deterministically: log-normal (sigma 0.6:
    p90 about 2.2 x the median, about 7% of rows over 2,048 and cut there, as data.max_length
    truncates them); the sample median of a few hundred rows lands near 860 tokens."""
    import numpy as np

    draws = np.random.default_rng(seed).lognormal(np.log(median), sigma, rows)
    return [int(min(longest, max(shortest, round(x)))) for x in draws]


def train_finished(config):
    """run_training(config), which must finish: (result, events, metrics.jsonl's records, wall seconds)."""
    from qlora_studio.core.runs.store import RunFolder
    from qlora_studio.core.training.runner import run_training

    events = []
    started = time.time()
    result = run_training(config, events.append)
    wall = time.time() - started
    assert result.status == "finished", result.error
    return result, events, RunFolder(result.run_dir).read_metrics(), wall


def add_trainer_callback(callback) -> None:
    """Every Trainer that run_training builds in this process gets `callback` (a benchmark's hook)."""
    from qlora_studio.core.training import runner

    build = runner.build_trainer

    def with_callback(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    runner.build_trainer = with_callback


def step_clock(steps: list[tuple[float, int]]):
    """A Trainer callback that appends (seconds, real tokens) per optimizer step to `steps`: host clock
    between CUDA syncs, tokens from the Trainer's non-padding count (include_num_input_tokens_seen)."""
    import torch
    from transformers import TrainerCallback

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.t, self.tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            steps.append((time.perf_counter() - self.t, int(state.num_input_tokens_seen - self.tokens)))

    return Clock()


def epoch_clock(epochs: list[dict]):
    """A Trainer callback that appends one record per epoch to `epochs`: the seconds from
    on_epoch_begin (after torch.cuda.synchronize) to the end of the epoch's last optimizer step as
    the GPU ran it (a CUDA event queued at each on_step_end; the host clock on a CPU), optimizer
    steps, and the Trainer's token count over the epoch (a lagging count, e.g. the studio's step
    logs read a step late, shifts it by a step). Idle GPU time between steps counts; what a trainer
    does after its last step does not: the studio writes its end-of-training checkpoint there
    (adapter, optimizer state: ~1 s for the 8B shape), which the other arms do not write at all."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    def mark():
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(begin, end) -> float:
        return begin.elapsed_time(end) / 1e3 if cuda else end - begin

    class EpochClock(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.began, self.ended = mark(), None
            self.step, self.tokens = state.global_step, state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            self.ended = mark()

        def on_epoch_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            if self.ended is None:
                return
            epochs.append({"seconds": round(seconds(self.began, self.ended), 3), "steps": state.global_step - self.step,
                           "tokens_seen": int(state.num_input_tokens_seen - self.tokens)})

    return EpochClock()


def epoch_figures(epochs: list[dict], real_tokens: int | None) -> dict:
    """The headline: the rows' real tokens over the second epoch's wall-clock time (the first holds
    warm-up: kernel compiles, autotuning, allocator growth)."""
    second = epochs[1] if len(epochs) > 1 else None
    rate = round(real_tokens / second["seconds"], 1) if second and real_tokens and second["seconds"] > 0 else None
    return {"epochs": epochs, "epoch_real_tokens": real_tokens, "epoch2_s": second["seconds"] if second else None,
            "epoch2_tokens_per_s": rate}


KERNEL_KINDS = (  # first match wins: kernel-name fragments -> what the time is spent on
    ("4-bit dequantize", ("dequantize", "kdequant")),
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "splitk", "cublas")),
    ("Liger / Triton", ("liger", "_rms_norm", "_swiglu", "_rope", "triton")),
    ("dropout", ("dropout", "bernoulli", "philox")),
    ("copy / cast", ("copy", "cast", "cat", "memcpy", "memset", "fill")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "unrolled")),
)


def profile_window(first: int, last: int, out: Path | None):
    """A Trainer callback that runs torch.profiler over steps first..last and then prints (and saves
    to `out`) where the GPU's time went: per kind of kernel, then the 30 costliest kernels."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()  # a CPU trace only checks the script (--smoke): no kernels to report
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA if cuda
                                                  else torch.profiler.ProfilerActivity.CPU])
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Window(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first:
                sync()
                profiler.start()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == last:
                sync()
                profiler.stop()
                text = kernel_report(profiler, last - first)  # steps first+1 .. last
                print(text, flush=True)
                if out is not None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(text)

    return Window()


def gpu_idle_report(profiler, steps: int) -> list[str]:
    """How long the GPU waited for the host: the watched span less the union of kernel intervals,
    and the largest gaps with the kernels either side (a CUDA-only trace: host-side profiling
    would slow the host and make gaps of its own)."""
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in profiler.events()
                     if e.device_type.name == "CUDA" and not getattr(e, "is_user_annotation", False))
    if not kernels:
        return []
    busy, gaps, (start, end, name) = 0.0, [], kernels[0]
    first = start
    for a, b, after in kernels[1:]:  # name: the kernel that ends last so far
        if a > end:
            busy += end - start
            gaps.append((a - end, name, after))
            start = a
        if b > end:
            end, name = b, after
    busy += end - start
    span = end - first
    big = sorted((g for g in gaps if g[0] > 200), reverse=True)
    lines = [f"GPU busy {busy / steps / 1e3:.1f} of {span / steps / 1e3:.1f} ms per step ({100 * busy / span:.1f}%); "
             f"gaps over 0.2 ms: {len(big) / steps:.0f} per step, {sum(g[0] for g in big) / steps / 1e3:.1f} ms; "
             f"smaller gaps {(sum(g[0] for g in gaps) - sum(g[0] for g in big)) / steps / 1e3:.1f} ms"]
    lines += [f"  gap {length / 1e3:6.2f} ms after {before[:50]} / before {after[:50]}" for length, before, after in big[:24]]
    return lines


def kernel_report(profiler, steps: int) -> str:
    events = [e for e in profiler.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1
    kinds: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        kind = next((k for k, frags in KERNEL_KINDS if any(f in name for f in frags)), "other")
        kinds[kind] = kinds.get(kind, 0) + e.self_device_time_total
    lines = gpu_idle_report(profiler, steps)
    lines.append(f"GPU time per step: {total / steps / 1e3:.1f} ms (kernels only, {steps} steps)")
    lines += [f"  {k:18} {v / steps / 1e3:8.1f} ms  {100 * v / total:5.1f}%" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    lines.append(f"{'ms/step':>8} {'calls/step':>10}  kernel")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:30]:
        lines.append(f"{e.self_device_time_total / steps / 1e3:8.2f} {e.count / steps:10.0f}  {e.key[:110]}")
    return "\n".join(lines)


def model_flops_per_token(shape: str, row_tokens: int) -> dict:
    """FLOPs a QLoRA step spends per trained token of `shape` (tests/shapes.py), rows of `row_tokens`
    attending causally within themselves. "model": forward and the input gradients of every linear
    layer (the base is frozen: no weight gradients but LoRA's, counted too) and attention's forward
    and backward; "hardware" adds what gradient checkpointing recomputes (the layers' forward again)."""
    spec = SHAPES[shape]
    hidden, inter, layers = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    heads = spec["num_attention_heads"]
    head_dim = spec.get("head_dim", hidden // heads)
    kv = spec["num_key_value_heads"] * head_dim
    per_layer = hidden * (heads * head_dim) * 2 + hidden * kv * 2 + 3 * hidden * inter  # q, o; k, v; gate, up, down
    linear = layers * per_layer + hidden * spec["vocab_size"]  # the output head
    r = 16  # LoRA rank of the benchmarks, all seven projections: A and B, forward, input and weight gradients
    lora = layers * r * (2 * hidden + 2 * (heads * head_dim) + 2 * kv + 2 * (hidden + inter) + (inter + hidden))
    attention_forward = 2 * row_tokens * layers * heads * head_dim  # QK^T and PV, causal: half of 2 x 2 x L x d
    model = 4 * linear + 6 * lora + 3 * attention_forward
    recompute = 2 * (linear - hidden * spec["vocab_size"]) + 2 * lora + attention_forward
    return {"model": model, "hardware": model + recompute}


def bf16_matmul_tflops(n: int = 8192, repeats: int = 20) -> float | None:
    """The GPU's measured dense bf16 matmul rate (n x n x n), the denominator of MFU."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    del a, b
    torch.cuda.empty_cache()
    return round(2 * n**3 / seconds / 1e12, 1)


def simulate_card(gb: float | None) -> None:
    """Cap this process's CUDA memory as a `gb` GiB card would, for arms that do not go through
    run_training (which caps itself from train.experimental.card_gb, the same way)."""
    from qlora_studio.core.model.devices import cap_gpu_memory
    from qlora_studio.core.planner.estimate import CUDA_CONTEXT_BYTES

    cap_gpu_memory(gb, CUDA_CONTEXT_BYTES)


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu_name()})"


def cpu_name() -> str:
    """The CPU model (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_slug(name: str | None = None) -> str:
    slug = (name or gpu_name()).lower().replace("nvidia ", "").replace(" ", "-").replace("(", "").replace(")", "")
    return slug.split("-hbm")[0]


def environment() -> dict:
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {"gpu": gpu_name(), "cuda": torch.version.cuda, "python": platform.python_version(), "versions": versions,
            "date": time.strftime("%Y-%m-%d")}


def save(name: str, payload: dict, out: Path | None = None, measured_on: dict | None = None) -> Path:
    """`measured_on`: the environment of the runs a summary merges (a report made on another machine)."""
    env = measured_on or environment()
    target = (out or RESULTS) / f"{name}-{gpu_slug(env['gpu'])}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"environment": env, **payload}, indent=2, default=str) + "\n")
    print(f"wrote {target}")
    return target
