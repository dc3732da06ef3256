"""QLoRA Studio's headless core, in rooms: config, model, data, planner, training, after-training and
the CLI. It never imports Qt or anything under gui/ (checked by import-linter in the tests)."""

from qlora_studio.core import hub_kernels as _hub_kernels

_hub_kernels.install()  # before any library that fetches Hub kernels on import is imported (see the module)
