"""Where training runs: the device and compute dtype, which fused kernels apply, what GPUs there are
and how much of their memory is in use.

GPU memory comes from NVML (nvidia-ml-py), which sees the whole device, other processes included,
which PyTorch's allocator counters do not; without NVML (no NVIDIA driver) everything here
degrades to PyTorch's view or to nothing.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass

from qlora_studio.core.errors import ModelLoadError, UserError

GIB = 1024**3

_nvml_lock = threading.Lock()
_nvml_ready: bool | None = None


@dataclass
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    used_bytes: int | None

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GIB


def _nvml():
    """The pynvml module, initialised once, or None where there is no NVIDIA driver."""
    global _nvml_ready
    with _nvml_lock:
        if _nvml_ready is False:
            return None
        try:
            import pynvml
        except ImportError:
            _nvml_ready = False
            return None
        if _nvml_ready is None:
            try:
                pynvml.nvmlInit()
                _nvml_ready = True
            except pynvml.NVMLError:
                _nvml_ready = False
                return None
        return pynvml


def list_gpus() -> list[GpuInfo]:
    nvml = _nvml()
    if nvml is not None:
        gpus = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(GpuInfo(index, name.decode() if isinstance(name, bytes) else name, int(memory.total), int(memory.used)))
            return gpus
        except nvml.NVMLError:
            pass
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        GpuInfo(i, torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory, None)
        for i in range(torch.cuda.device_count())
    ]


def device_used_bytes(index: int) -> int | None:
    """Memory in use on the whole device (all processes), from NVML."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index)).used)
    except nvml.NVMLError:
        return None


def torch_memory(device) -> dict[str, float]:
    """PyTorch allocator counters for `device` in GiB (empty on CPU)."""
    import torch

    if getattr(device, "type", None) != "cuda":
        return {}
    stats = {
        "vram_allocated_gb": torch.cuda.memory_allocated(device) / GIB,
        "vram_reserved_gb": torch.cuda.memory_reserved(device) / GIB,
        "vram_peak_gb": torch.cuda.max_memory_allocated(device) / GIB,
    }
    used = device_used_bytes(device.index or 0)
    if used is not None:
        stats["vram_device_used_gb"] = used / GIB
    return {k: round(v, 4) for k, v in stats.items()}


# ---- device, dtype, kernels ---------------------------------------------------------------------

def resolve_device(setting: str):
    import torch

    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("train.device is cuda, but no CUDA GPU is visible; use auto or cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_compute_dtype(setting: str, device):
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def liger_applies(setting: str, device_type: str = "cuda") -> bool:
    """Whether Liger's fused Triton kernels run: the one decision the runner and the planner share.

    They are CUDA kernels from the optional liger-kernel package; `on` without the package is an
    error rather than a silent fallback.
    """
    if setting == "off" or device_type != "cuda":
        return False
    available = importlib.util.find_spec("liger_kernel") is not None
    if setting == "on" and not available:
        raise UserError("train.liger_kernels is on, but liger-kernel is not installed: pip install liger-kernel")
    return available
