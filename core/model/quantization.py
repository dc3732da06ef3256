"""How the frozen weights are quantized: the one place a `BitsAndBytesConfig` is made, and the
report of what a loaded model really holds (with the double-quant saving measured on it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qlora_studio.core.config.schema import QuantizationSettings
from qlora_studio.core.model.quant_layout import quant_constants_4bit_bytes


def build_bnb_config(q: QuantizationSettings, compute_dtype, quant_storage=None):
    """The one place a `BitsAndBytesConfig` is made; None when the weights stay unquantized."""
    import torch
    from transformers import BitsAndBytesConfig

    if q.mode == "none":
        return None
    if q.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage or torch.uint8,
    )


@dataclass
class QuantizationReport:
    """What quantization a loaded model really has, and the bytes its parts take.

    `quant_constants_bytes` is measured from the loaded tensors; the `_with_double_quant` and
    `_without_double_quant` figures apply bitsandbytes' layout to the same layers, so the saving
    of either setting is known from one load.
    """

    mode: str  # 4bit | 8bit | none
    quant_type: str | None
    double_quant: bool | None
    compute_dtype: str
    quantized_layers: int = 0
    quantized_params: int = 0
    unquantized_params: int = 0
    quantized_weight_bytes: int = 0
    quant_constants_bytes: int = 0
    unquantized_bytes: int = 0
    model_bytes: int = 0
    quant_constants_bytes_with_double_quant: int | None = None
    quant_constants_bytes_without_double_quant: int | None = None
    note: str | None = None

    @property
    def double_quant_saving_bytes(self) -> int | None:
        if self.quant_constants_bytes_without_double_quant is None or self.quant_constants_bytes_with_double_quant is None:
            return None
        return self.quant_constants_bytes_without_double_quant - self.quant_constants_bytes_with_double_quant

    @property
    def label(self) -> str:
        """How people name it: '4-bit nf4 + double quant', '8-bit', '16-bit (none)'."""
        if self.mode == "4bit":
            return f"4-bit {self.quant_type}{' + double quant' if self.double_quant else ''}"
        return "8-bit" if self.mode == "8bit" else f"{self.compute_dtype} (not quantized)"

    @property
    def short_label(self) -> str:
        """The run list's column: '4bit nf4 +DQ'."""
        if self.mode == "4bit":
            return f"4bit {self.quant_type}{' +DQ' if self.double_quant else ''}"
        return self.mode

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "double_quant_saving_bytes": self.double_quant_saving_bytes}

    @classmethod
    def planned(cls, q: QuantizationSettings, compute_dtype: str = "auto") -> "QuantizationReport":
        """The report a config asks for, before any model is loaded (run lists of old runs)."""
        four = q.mode == "4bit"
        return cls(q.mode, q.quant_type if four else None, q.double_quant if four else None, compute_dtype)


def quantization_report(model, q: QuantizationSettings, compute_dtype) -> QuantizationReport:
    import bitsandbytes as bnb

    layers = quantized_params = packed = constants = with_dq = without_dq = int8_data = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            numel = module.in_features * module.out_features
            layers += 1
            quantized_params += numel
            packed += weight.numel() * weight.element_size()
            constants += _quant_state_bytes(weight.quant_state)
            with_dq += quant_constants_4bit_bytes(numel, True)
            without_dq += quant_constants_4bit_bytes(numel, False)
            seen.add(id(weight))
        elif isinstance(module, bnb.nn.Linear8bitLt):
            layers += 1
            quantized_params += module.in_features * module.out_features
            int8_data += module.weight.numel()
            scales = getattr(module.weight, "SCB", None)
            constants += scales.numel() * scales.element_size() if scales is not None else module.out_features * 4
            seen.add(id(module.weight))
    other_params = other_bytes = 0
    for param in model.parameters():
        if id(param) not in seen:
            other_params += param.numel()
            other_bytes += param.numel() * param.element_size()
    four = q.mode == "4bit"
    return QuantizationReport(
        mode=q.mode if layers or q.mode == "none" else "none",
        quant_type=q.quant_type if four else None,
        double_quant=bool(q.double_quant) if four else None,
        compute_dtype=str(compute_dtype).replace("torch.", ""),
        quantized_layers=layers,
        quantized_params=quantized_params,
        unquantized_params=other_params,
        quantized_weight_bytes=packed + int8_data,
        quant_constants_bytes=constants,
        unquantized_bytes=other_bytes,
        model_bytes=packed + int8_data + constants + other_bytes,
        quant_constants_bytes_with_double_quant=with_dq if four else None,
        quant_constants_bytes_without_double_quant=without_dq if four else None,
        note="no layer was quantized" if q.mode != "none" and layers == 0 else None,
    )


def _quant_state_bytes(state: Any) -> int:
    import torch

    total = 0
    for tensor in (state.absmax, state.code, state.offset):
        if isinstance(tensor, torch.Tensor):
            total += tensor.numel() * tensor.element_size()
    if state.state2 is not None:
        total += _quant_state_bytes(state.state2)
    return total
