"""What the methods past SFT add to a step's memory, mapped onto the planner's terms.

  DPO, ORPO   chosen and rejected run as one batch: twice the rows, each up to data.max_length
  KTO         the answers, plus a mismatched batch for the KL estimate that runs without gradients
              (its activations are freed layer by layer: no more than one layer's at a time)
  GRPO        each row is a prompt and a sampled answer: up to data.max_length +
              max_completion_length tokens; before training on them, the answers are generated with
              the KV cache of micro_batch_size x grad_accum sequences (TRL generates a whole step's
              rows at once), which is a separate peak: the run's is the larger of the two
  reference   DPO and KTO score the base (the adapter switched off) without gradients: a forward
              pass whose activations never outlive their layer, so no term of its own
  log-probs   DPO, KTO and GRPO score answer tokens in tiles through TRL's fused output head (the
              planner's chunked loss); ORPO holds the full logits of both answers
"""

from __future__ import annotations

import dataclasses

from qlora_studio.core.model.shape import ModelShape

PAIR_METHODS = ("dpo", "orpo")
TILED_LOG_PROBS = ("dpo", "kto", "grpo")
# Per decoding step while generating: the last position's logits in fp32, softmax and sampling copies.
GENERATION_LOGITS_BYTES_PER_ELEMENT = 12.0


def method_rows(config, seq_len: int, micro: int) -> tuple[int, int]:
    """(row length, rows) of the batch a method's step runs, from SFT's (padded) ones."""
    t = config.train
    if t.method in PAIR_METHODS:
        return seq_len, micro * 2
    if t.method == "grpo":
        return config.data.max_length + t.grpo.max_completion_length, micro
    return seq_len, micro


def method_batch_sentence(config, seq_len: int, rows: int) -> str:
    """What a micro-batch of the method holds, for Setup and `estimate`."""
    t = config.train
    if t.method in PAIR_METHODS:
        return (f"Each micro-batch runs {_count(rows // 2, 'pair')} as {rows} padded rows (chosen and rejected) of "
                f"up to {seq_len:,} tokens.")
    if t.method == "kto":
        return (f"Each micro-batch runs {_count(rows, 'answer')} of up to {seq_len:,} tokens, then as many "
                "mismatched ones without gradients for the KL estimate.")
    if t.method == "grpo":
        prompts = rows * t.grad_accum // t.grpo.num_generations
        return (f"Each step samples {t.grpo.num_generations} answers for each of {_count(prompts, 'prompt')}, then "
                f"trains on micro-batches of {_count(rows, 'prompt + answer row')} of up to {seq_len:,} tokens.")
    return ""


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def method_loss(method: str) -> tuple[str, str]:
    """The planner's loss term for a method's log-probs, and why."""
    if method in TILED_LOG_PROBS:
        return "chunked", f"{method.upper()}: TRL's fused output head scores the answer tokens in tiles"
    return "full", f"{method.upper()}: TRL's trainer holds the logits of both answers"


def generation_bytes(shape: ModelShape, config, compute_bytes: int) -> int:
    """GRPO's generation peak beyond the weights and adapters: the KV cache of a step's sequences
    at their longest, and the last position's logits."""
    t = config.train
    sequences = t.micro_batch_size * t.grad_accum
    length = config.data.max_length + t.grpo.max_completion_length
    cache = 2 * shape.num_layers * shape.kv_heads * shape.head_dim * compute_bytes * sequences * length
    return int(cache + GENERATION_LOGITS_BYTES_PER_ELEMENT * sequences * shape.vocab)


def with_generation(estimate, shape: ModelShape, config, compute_bytes: int):
    """A GRPO estimate whose peak is the larger of training's and generation's."""
    if config.train.method != "grpo":
        return estimate
    generating = generation_bytes(shape, config, compute_bytes)
    training = estimate.gradients_bytes + estimate.activations_bytes
    if generating <= training:
        estimate.notes.append(f"generation's KV cache ({generating / 2**30:.2f} GiB) stays below training's peak")
        return estimate
    extra = generating - training
    slack = int(extra * estimate.slack_bytes / max(1, estimate.peak_allocated_bytes))
    notes = estimate.notes + [f"the peak is while generating: the KV cache of "
                              f"{config.train.micro_batch_size * config.train.grad_accum} sequences "
                              f"({generating / 2**30:.2f} GiB)"]
    return dataclasses.replace(estimate, peak_allocated_bytes=estimate.peak_allocated_bytes + extra,
                               slack_bytes=estimate.slack_bytes + slack, overhead_bytes=estimate.overhead_bytes + slack,
                               total_bytes=estimate.total_bytes + extra + slack, notes=notes)
