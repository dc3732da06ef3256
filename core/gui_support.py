"""Core calls the window needs, composed here so gui/ holds no data or config logic (no Qt)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from qlora_studio.core.config import RunConfig
from qlora_studio.core.runs import RunFolder, read_jsonl


@lru_cache(maxsize=4)
def _tokenizer(source_path: str, origin: str, revision: str | None, trust_remote_code: bool):
    from qlora_studio.core.config import ModelSettings
    from qlora_studio.core.modeling import ModelSource, load_tokenizer

    settings = ModelSettings(name_or_path=origin, revision=revision, trust_remote_code=trust_remote_code)
    return load_tokenizer(ModelSource(source_path, "local", origin), settings)


def preview_data(config: RunConfig, examples: int = 1, preview: int = 50):
    """The dataset X-ray for the window: `inspect_data` with the model's tokenizer and template.

    Bad rows are skipped and counted instead of raising, so the preview can show them; the
    window says that training stops on them unless data.skip_bad_rows is on. The tokenizer is
    cached per model, so editing data settings re-runs only the data pipeline.
    """
    from qlora_studio.core.data import inspect_data, stop_token_ids
    from qlora_studio.core.modeling import resolve_model_source

    source = resolve_model_source(config.model)
    tokenizer = _tokenizer(source.path, source.origin, config.model.revision, config.model.trust_remote_code)
    data = config.data.model_copy(update={"skip_bad_rows": True})
    return inspect_data(data, tokenizer, stop_token_ids(tokenizer, source.path), seed=config.train.seed,
                        examples=examples, preview=preview)


def run_history(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's recorded curves and its start event, for replaying its charts."""
    run = RunFolder(run_dir)
    started: dict[str, Any] = {}
    for record in read_jsonl(run.events_path):
        if record.get("type") == "run_started":
            started = record  # the last start (a resumed run starts again)
    return {
        "metrics": run.read_metrics(),
        "evals": read_jsonl(run.evals_path),
        "run_started": started,
        "status": run.read_status(),
    }
