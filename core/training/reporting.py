"""Metrics where people already look: TensorBoard and Weights & Biases through transformers' `report_to`,
with our own per-step metrics (real tokens/s, VRAM) in the same streams; and a run's metrics as CSV.

How it fits transformers 5 (read from trainer.py and integrations/integration_utils.py):

* `Trainer.log(logs)` is the one funnel: it copies `logs` into `state.log_history`, then hands the
  same dict to every callback's `on_log`, the reporting callbacks first. A callback of ours adding
  keys in `on_log` would be too late for them, so `ReportingMixin` overrides `Trainer.log` (the
  documented hook: "Subclass and override this method to inject custom behavior") and adds our
  numbers before anything sees the dict. TensorBoard and W&B name them `train/tokens_per_s`, ...
* `TrainingArguments(logging_dir=...)` is gone; `TensorBoardCallback` reads TENSORBOARD_LOGGING_DIR
  when it is made, so `trainer_environment` sets it only while the Trainer is built.
* `WandbCallback` logs into `wandb.run` when one is open and otherwise opens its own (in the working
  folder, project "huggingface"); `Reporting` opens it first, in the run folder, offline when W&B
  cannot be reached or nobody is logged in (`wandb sync` uploads it later). The API key stays
  wandb's business (`wandb login`, WANDB_API_KEY): it is never read into a config or a log here.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

from qlora_studio.core.config.choices import REPORTERS
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import ConfigError
from qlora_studio.core.runs.store import RunFolder, read_jsonl

TENSORBOARD_FOLDER = "tensorboard"
WANDB_PROJECT = "qlora-studio"
WANDB_HOST = "api.wandb.ai"


def installed(target: str) -> bool:
    return importlib.util.find_spec(REPORTERS[target].module) is not None


def install_hint(target: str) -> str:
    return f'pip install "qlora-studio[{REPORTERS[target].extra}]"'


def report_to(config: RunConfig) -> list[str] | str:
    """TrainingArguments' report_to for this run, after checking the packages are there: transformers
    would raise a RuntimeError from deep inside the Trainer's constructor instead."""
    for target in config.train.report_to:
        if not installed(target):
            raise ConfigError(f"train.report_to: {target} is not installed: {install_hint(target)}")
    return list(config.train.report_to) or "none"


def tensorboard_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TENSORBOARD_FOLDER


def tensorboard_command(run_dir: str | Path) -> str:
    return f'tensorboard --logdir "{tensorboard_dir(run_dir)}"'


@contextlib.contextmanager
def trainer_environment(config: RunConfig, run_dir: str | Path | None) -> Iterator[None]:
    """Build the Trainer inside this block: TensorBoard then writes into <run folder>/tensorboard.
    The variable is restored at once, so nothing else in the process sees it."""
    if "tensorboard" not in config.train.report_to or run_dir is None:
        yield
        return
    previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(run_dir))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous


class ReportingMixin:
    """`Trainer.log` with our numbers added to each training-step log, before log_history, TensorBoard,
    W&B or any callback sees it. `log_extras(state, logs)` returns them; only int and float values
    are added (TensorBoard warns about others)."""

    log_extras: Callable[[Any, dict[str, Any]], dict[str, float]] | None = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.log_extras is not None and "loss" in logs and "train_loss" not in logs:
            for key, value in self.log_extras(self.state, logs).items():  # type: ignore[attr-defined]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    logs[key] = value
        super().log(logs, start_time)  # type: ignore[misc]


class Reporting:
    """A run's reporting outside the Trainer: the W&B run (opened before training, finished at the end)."""

    def __init__(self, config: RunConfig, run_dir: Path, warn: Callable[[str], None]):
        self.wandb = None
        report_to(config)  # a missing package stops the run before the model loads
        if "wandb" in config.train.report_to:
            self.wandb = start_wandb_run(config, run_dir, warn)

    def close(self, failed: bool = False) -> None:
        if self.wandb is not None:
            run, self.wandb = self.wandb, None
            run.finish(exit_code=1 if failed else 0)


def start_wandb_run(config: RunConfig, run_dir: Path, warn: Callable[[str], None]):
    """Open the run's W&B run in <run folder>/wandb; WandbCallback logs into it.

    WANDB_MODE and WANDB_PROJECT, when set, are W&B's own switches and win. Otherwise the run is
    online when a login exists and W&B answers, else offline, with a note on how to upload it later.
    """
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_login_exists() and _reachable(_wandb_host()) else "offline")
    settings = {"project": os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, "name": run_dir.name, "group": run_dir.name,
                "dir": str(run_dir), "config": config.model_dump(mode="json"), "reinit": "finish_previous"}
    if mode == "online":
        try:
            return wandb.init(mode="online", **settings)
        except Exception as exc:  # noqa: BLE001 - a refused key or a server error must not stop the training
            warn(f"W&B refused the online run ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})")
            mode = "offline"
    if mode == "offline":
        warn(f"W&B: logging offline in {run_dir / 'wandb'} (no network or no `wandb login`); "
             f"upload it later with: wandb sync \"{run_dir / 'wandb'}\"/offline-run-*")
    return wandb.init(mode=mode, **settings)


def _wandb_host() -> str:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("WANDB_BASE_URL") or f"https://{WANDB_HOST}").hostname or WANDB_HOST


def _wandb_login_exists() -> bool:
    """Whether W&B has credentials: its environment variables, or the netrc entry `wandb login` writes.
    Only their presence is asked; the key stays with wandb (an online run without one would prompt)."""
    import netrc

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(_wandb_host()) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# ---- reading a run back ---------------------------------------------------------------------------

def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the TensorBoard event files under `logdir`, with TensorBoard's
    own reader (several files when a run was resumed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


def export_metrics_csv(run_dir: str | Path, out: str | Path) -> int:
    """metrics.jsonl as a CSV table, one row per step, with the evaluation loss of the steps that had
    one; returns the number of rows."""
    run = RunFolder(run_dir)
    rows = [dict(m) for m in run.read_metrics()]
    evals = {int(e["step"]): e for e in read_jsonl(run.evals_path)}
    columns: list[str] = []
    for row in rows:
        row["eval_loss"] = evals.get(int(row.get("step", -1)), {}).get("eval_loss")
        columns += [key for key in row if key not in columns]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns or ["step"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
