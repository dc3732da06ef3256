"""Every change a run makes to code it does not own, made through one context manager that undoes
all of it on any exit.

A run changes more than its own objects: Liger replaces names in the model's modeling module (its
RMSNorm class, rotary function), and the speed levers replace methods on the model's modules (the
lean LoRA forward, MLP tiles, the offloading checkpoint hook, compiled decoder layers). Each change
goes through `RunPatches`, which registers its undo as it makes it. It is an `ExitStack`, so a
failure halfway through patching undoes what was done, and the end of a run (finished, failed or
stopped by an exception) undoes everything: an export or a Playground model built later in the same
process runs the libraries' own code. A killed child process takes its patches with it.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any

_ABSENT = object()


class RunPatches(ExitStack):
    """The run's patches; use as `with RunPatches() as patches:` around everything that trains.
    Outside a `with` (a test, a benchmark) the patches are simply never undone."""

    def set_attribute(self, owner: Any, name: str, value: Any) -> None:
        """`owner.name = value` on the instance itself (a bound method's replacement, say); undone
        by putting back what the instance had, or by removing it so the class's shows again."""
        held = vars(owner)
        before = held.get(name, _ABSENT)
        held[name] = value
        self.callback(_put_back, held, name, before)

    def keep_module_names(self, module_name: str) -> None:
        """Snapshot a module's names, to be put back at the end (for a library that patches a whole
        module, such as Liger's `apply_liger_kernel`)."""
        module = sys.modules[module_name]
        saved = dict(vars(module))

        def restore() -> None:
            for name, value in saved.items():
                if vars(module).get(name) is not value:
                    setattr(module, name, value)

        self.callback(restore)

    def compile(self, module, **options) -> None:
        """`module.compile(**options)` (torch.compile of its call, the module kept as it is); undone
        by dropping the compiled call."""
        module.compile(**options)
        self.callback(setattr, module, "_compiled_call_impl", None)


def _put_back(held: dict, name: str, before: Any) -> None:
    if before is _ABSENT:
        held.pop(name, None)
    else:
        held[name] = before
