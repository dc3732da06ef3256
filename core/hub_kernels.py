"""Compiled kernels from the Hugging Face Hub load only after the user's yes.

transformers (5.25 and newer) depends on the `kernels` package, which downloads compiled kernels
from the Hub and loads them into this process. Libraries call it on their own, without asking:
bitsandbytes' CPU backend when it is imported on a CPU with AVX512-BF16, transformers when it
reads GGUF weights or finds flash-attn missing, and a few model files; and since 5.25
`from_pretrained` "kernelizes" every model by default, swapping layers for Hub kernels, unless the
environment variable USE_HUB_KERNELS says no. Each of those callers falls back to its local code
when the call raises.

`install()` (run when `qlora_studio.core` is imported, so before any of those libraries) wraps
the package's loaders the moment the package is imported: without consent they raise
`HubKernelRefused` before anything reaches the network, and USE_HUB_KERNELS is set to NO. Consent is `allow_hub_kernels()` (the
CLI's `--allow-hub-kernels`), for this process and the processes it starts, never written into
a config. This is a gate for the process's whole life, not a context manager: the imports it
guards happen wherever a library first imports bitsandbytes or transformers.
"""

from __future__ import annotations

import functools
import importlib.abc
import logging
import os
import sys

CONSENT_VARIABLE = "QLORA_STUDIO_ALLOW_HUB_KERNELS"
TRANSFORMERS_SWITCH = "USE_HUB_KERNELS"  # read by from_pretrained at each call
# The package's public entry points that fetch from the Hub (kernelize loads layers' Hub repositories).
LOADERS = ("get_kernel", "get_locked_kernel", "load_kernel", "install_kernel", "has_kernel", "kernelize")
# bitsandbytes logs its fallback as a warning (with our refusal in it); the local kernel is what we want.
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


class HubKernelRefused(RuntimeError):
    """A library asked for a Hub kernel and the user has not allowed code from the Hub."""


def allow_hub_kernels() -> None:
    """The user said yes to compiled kernels from the Hub (this process and its children)."""
    os.environ[CONSENT_VARIABLE] = "1"
    os.environ[TRANSFORMERS_SWITCH] = "YES"


def hub_kernels_allowed() -> bool:
    return os.environ.get(CONSENT_VARIABLE) == "1"


def install() -> None:
    """Gate `kernels` in this process: now if it is already imported, else when it is (idempotent)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not hub_kernels_allowed():
        os.environ[TRANSFORMERS_SWITCH] = "NO"  # our yes is the only one (allow_hub_kernels sets YES)
    if "kernels" in sys.modules:
        _gate(sys.modules["kernels"])
    if not any(isinstance(finder, _GatingFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _GatingFinder())


def _refuse(name: str, args: tuple, kwargs: dict) -> None:
    repo = args[0] if args and isinstance(args[0], str) else kwargs.get("repo_id") or name
    raise HubKernelRefused(f"{repo}: a compiled kernel from the Hugging Face Hub was asked for; it runs only "
                           "with --allow-hub-kernels (the local kernel is used instead)")


def _gate(module) -> None:
    for name in LOADERS:
        original = getattr(module, name, None)
        if original is None or getattr(original, "qlora_studio_gate", False):
            continue

        @functools.wraps(original)
        def gated(*args, _original=original, _name=name, **kwargs):
            if not hub_kernels_allowed():
                _refuse(_name, args, kwargs)
            return _original(*args, **kwargs)

        gated.qlora_studio_gate = True
        setattr(module, name, gated)


class _GatingLoader(importlib.abc.Loader):
    """The package's own loader, then the gate, before any importer sees the module."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _gate(module)

    def __getattr__(self, name):  # resource readers and the like
        return getattr(self._loader, name)


class _GatingFinder(importlib.abc.MetaPathFinder):
    """Asks the finders after it (the path finder; in a frozen app, PyInstaller's own) for the package."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "kernels":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _GatingLoader(spec.loader)
                return spec
        return None
