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
ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch reads either; the second is newer
EXPANDABLE = "expandable_segments:True"

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


# ---- the CUDA caching allocator --------------------------------------------------------------

def configure_cuda_allocator() -> str | None:
    """Expandable segments for PyTorch's CUDA allocator, unless the user set PYTORCH_CUDA_ALLOC_CONF.

    The default allocator carves fixed-size segments; at long context the large activation blocks
    of one step fragment them and a later step fails with GiBs reserved but unallocated (8B at
    32k tokens on a 24 GB card died in step 2; with expandable segments, which grow one mapped
    range per stream instead, it finished). torch reads the variable when CUDA first allocates,
    so every entry point calls this before anything touches the GPU: the CLI, the window, a
    distributed worker (their children inherit it), and run_training as a last resort. Returns
    the setting now in force for this process, or None when the user's own is.
    """
    if any(os.environ.get(name) for name in ALLOC_CONF_VARS):
        return None
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = EXPANDABLE
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # too late for the variable: tell the live allocator
        try:
            torch._C._accelerator_setAllocatorSettings(EXPANDABLE)
        except (AttributeError, RuntimeError):
            try:
                torch.cuda.memory._set_allocator_settings(EXPANDABLE)
            except (AttributeError, RuntimeError):
                return None
    return EXPANDABLE


def expandable_segments_expected() -> bool:
    """Whether runs from this install use expandable segments: yes, unless the user's own allocator
    setting says otherwise. The planner's allocator margin depends on it (configure_cuda_allocator)."""
    for name in ALLOC_CONF_VARS:
        value = os.environ.get(name)
        if value:
            return "expandable_segments:true" in value.replace(" ", "").lower()
    return True


def host_ram_bytes() -> int | None:
    """This computer's physical memory (psutil), None where it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - an exotic platform: the planner then checks nothing
        return None


def gpu_budget_bytes(device, card_gb: float | None = None) -> int | None:
    """The memory this process may use on `device`: `card_gb` when the run trains as on a smaller
    card (train.experimental.card_gb), else the card's total times the per-process fraction."""
    import torch

    if getattr(device, "type", None) != "cuda":
        return None
    if card_gb:
        return int(card_gb * GIB)
    index = device.index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = getter(index) if getter is not None else 1.0
    return int(total * min(1.0, fraction))


def cap_gpu_memory(card_gb: float | None, context_bytes: int) -> None:
    """Train as on a `card_gb` GiB card: cap this process's CUDA memory there. The cap binds the
    caching allocator only; on a real card the CUDA context (outside it) takes its share of the
    same memory, so the cap is the card less `context_bytes`, what the planner counts for it."""
    import torch

    if not card_gb or not torch.cuda.is_available():
        return
    index = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (card_gb * GIB - context_bytes) / total), index)
