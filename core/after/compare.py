"""A second run beside the first on the one loaded base: what makes two runs' bases the same (the
model, its revision, the quantization and the compute dtype the 4-bit codes were made from), the
one-line refusal when they are not, and what a loaded comparison holds (its own adapter name on
the shared model, and its own tokenizer, chat template and stop tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlora_studio.core.after.adapters import AdapterRef
from qlora_studio.core.errors import UserError
from qlora_studio.core.model.generation import ChatModel


@dataclass
class Comparison:
    """The second adapter on the session's model: peft's name for it and the chat it answers with."""

    ref: AdapterRef
    adapter: str  # the name peft knows it by on the shared PeftModel
    chat: ChatModel  # the shared model with this run's own tokenizer (chat template) and stop tokens


def _model_id(ref: AdapterRef) -> tuple:
    m = ref.config.model
    name = m.name_or_path
    local = Path(name).expanduser()
    if local.exists():  # a folder named two ways (relative, ~) is still one folder
        name = str(local.resolve())
    return name, m.revision, m.random_init


def base_identity(ref: AdapterRef, device) -> tuple:
    """What must match for `ref`'s adapter to sit on a base loaded for another run: the same weights
    (model, revision) quantized the same way from the same dtype (so the same 4-bit codes)."""
    q = ref.config.quantization
    four = q.mode == "4bit"
    return (_model_id(ref), q.mode, q.quant_type if four else None, q.double_quant if four else None,
            str(ref.compute_dtype(device)))


def describe_base(ref: AdapterRef, device) -> str:
    """'HuggingFaceTB/SmolLM2-135M-Instruct@main (4bit nf4 +DQ, bfloat16)'."""
    from qlora_studio.core.model.quantization import QuantizationReport

    m = ref.config.model
    revision = f"@{m.revision}" if m.revision else ""
    random = ", random init" if m.random_init else ""
    dtype = str(ref.compute_dtype(device)).removeprefix("torch.")
    return f"{m.name_or_path}{revision} ({QuantizationReport.planned(ref.config.quantization).short_label}, {dtype}{random})"


def check_same_base(loaded: AdapterRef, incoming: AdapterRef, device) -> None:
    """Raise a one-line UserError naming both models unless `incoming` trains on `loaded`'s base."""
    if base_identity(incoming, device) != base_identity(loaded, device):
        raise UserError(f"Cannot compare {incoming.name} with {loaded.name}: {incoming.name} was trained on "
                        f"{describe_base(incoming, device)}, {loaded.name} on {describe_base(loaded, device)}; "
                        "compare runs of the same base model, quantized alike")
