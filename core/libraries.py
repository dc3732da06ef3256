"""The heavy libraries imported once, by one thread, before several threads use them.

transformers' `__init__` ends by replacing its own module in `sys.modules` with a lazy module
(`_LazyModule`). CPython's `import` statement looks the module up *before* it waits for another
thread that is still importing it, and after the wait hands back the object it looked up: the
plain, half-built module, which has none of the lazy names. So when two threads start with
`from transformers import AutoConfig` at once, the one that waited fails with "cannot import
name 'AutoConfig' from 'transformers'" (the window's model line, X-ray and memory estimate all
start on worker threads at once). Once the import has finished on one thread, every later import
sees the lazy module and is safe from any thread.

`import_libraries()` does that first import under a lock; every thread that runs core work calls
it first (the window's workers do, in `gui/workers/tasks.py`). The cost is paid once per process.
"""

from __future__ import annotations

import threading

from qlora_studio.core.quiet import quiet_libraries

_lock = threading.Lock()
_done = False


def import_libraries() -> None:
    """Import transformers (with torch) and datasets on this thread, quietly, unless some thread
    already has; blocks while another thread is importing them."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        quiet_libraries()  # imports transformers (and datasets), their chatter turned down before it starts
        import transformers  # noqa: F401 - the import itself is the point (see the module docstring)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401 - their lazy submodules too
        import peft  # noqa: F401 - imports transformers' submodules of its own

        _done = True
