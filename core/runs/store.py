"""Run folders: one per run, everything needed to watch, replay, reproduce or resume it.

    runs/20261124-101500-smollm2-135m-instruct/
        config.yaml          resolved config (updated when the run changes its own settings)
        status.json          running | finished | stopped | interrupted | failed, and counters
        metrics.jsonl        one JSON object per optimizer step
        evals.jsonl          one JSON object per evaluation
        events.jsonl         every other event (start, checkpoints, warnings, changes, end)
        probes.jsonl         the probe prompts' answers: before step 1 (base) and at each checkpoint
        checkpoints/step-000100/   adapter + optimizer + scheduler + RNG + trainer state
        adapter/             the final PEFT adapter and tokenizer

Every file is written so a kill at any moment leaves a readable folder (`core.atomic`): whole files
and folders are renamed into place when complete, logs are append-only (a torn last line is
skipped on read and cut off by `repair` before a resumed run appends).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qlora_studio.core.atomic import append_line, recover_dir, repair_tail, write_json_atomic, write_text_atomic
from qlora_studio.core.config.files import default_runs_dir, load_config, runs_dir
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import DiskError, UserError
from qlora_studio.core.model.quantization import QuantizationReport
from qlora_studio.core.runs.events import (
    EVENT_TYPES, EvalLogged, Event, NonFiniteStep, ProbesAnswered, RunStarted, StepMetrics, event_from_dict,
)

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
STATUSES = ("running", "finished", "stopped", "interrupted", "failed")
META_NAME = "qlora_studio.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def slug(text: str) -> str:
    tail = text.rstrip("/").split("/")[-1]
    tail = re.sub(r"\.gguf$", "", tail, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")[:40] or "model"


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- layout ----
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def evals_path(self) -> Path:
        return self.path / "evals.jsonl"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def probes_path(self) -> Path:
        return self.path / "probes.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    # ---- creation ----
    @classmethod
    def create(cls, config: RunConfig) -> "RunFolder":
        root = runs_dir(config)
        name = config.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{slug(config.model.name_or_path)}"
        path = root / name
        suffix = 1
        while path.exists():
            suffix += 1
            path = root / f"{name}-{suffix}"
        try:
            path.mkdir(parents=True)
            (path / "checkpoints").mkdir()
            run = cls(path)
            config.save(run.config_path)
        except OSError as exc:
            raise DiskError(f"output_dir: cannot create the run folder {path} ({exc.strerror or exc}); choose a "
                            "folder you can write to, or free some space") from None
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        run = cls(path)
        if not run.config_path.is_file():
            raise UserError(f"{path}: not a run folder (no config.yaml)")
        return run

    def load_config(self, overrides: list[str] | None = None) -> RunConfig:
        config = load_config(self.config_path, overrides)
        asked = any(o.strip().startswith("data.packing") for o in overrides or [])
        if not asked and "packing:" not in self.config_path.read_text(encoding="utf-8"):
            # a run made before packing existed trained padded batches: resuming it packed would
            # change which rows share a step and where the resumed epoch continues
            config = config.with_overrides({"data.packing": "off"})
        return config

    def repair(self) -> None:
        """Finish or undo what a killed process left half done, before a resumed run writes again:
        torn last log lines, an adapter or checkpoint caught between its two renames, the Trainer's
        unfinished `checkpoint-N` folders and temporary files."""
        for path in (self.metrics_path, self.evals_path, self.events_path):
            repair_tail(path)
        recover_dir(self.adapter_dir)
        shutil.rmtree(self.path / "adapter.tmp", ignore_errors=True)
        if self.checkpoints_dir.is_dir():
            for child in self.checkpoints_dir.iterdir():
                if child.name.startswith(("checkpoint-", ".trash-")):
                    shutil.rmtree(child, ignore_errors=True)
                elif child.name.endswith(".old"):
                    recover_dir(child.with_name(child.name[: -len(".old")]))
        for leftover in self.path.glob(".*.tmp*"):
            leftover.unlink(missing_ok=True)

    # ---- status ----
    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_status(self, status: str, **fields: Any) -> None:
        data = self.read_status()
        data.update(fields)
        data.update(status=status, updated_at=time.time())
        if status == "running":
            data.update(pid=os.getpid(), host=socket.gethostname())
        write_json_atomic(self.status_path, data)

    def mark_running(self, step: int) -> None:
        """The run (or a resumed one) has begun in this process."""
        self.write_status("running", started_at=self.read_status().get("started_at", time.time()), step=step,
                          reason=None, paused=False)

    def effective_status(self) -> str:
        """The recorded status, or `interrupted` for a run whose process is gone."""
        data = self.read_status()
        status = data.get("status", "interrupted")
        if status == "running" and not _process_alive(data.get("pid"), data.get("host")):
            return "interrupted"
        return status

    # ---- metrics and events ----
    def append_jsonl(self, path: Path, record: dict[str, Any]) -> None:
        append_line(path, json.dumps(record, ensure_ascii=False))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def save_data_report(self, report: dict[str, Any]) -> None:
        """What the dataset pipeline did (without the rendered examples and preview rows)."""
        kept = {k: v for k, v in report.items() if k not in ("examples", "preview_rows")}
        write_json_atomic(self.path / "data_report.json", kept)

    def history(self) -> "RunHistory":
        """The recorded curves and the last start event (a resumed run starts again), for replaying."""
        started = None
        marks = []
        log = []
        for record in read_jsonl(self.events_path):
            if record.get("type") == "run_started":
                record = started = {**record, "config": {}}  # the recorder leaves the config to config.yaml
            if record.get("type") in EVENT_TYPES:
                try:
                    event = event_from_dict(record)
                except (KeyError, TypeError, ValueError):
                    continue  # a record of an older or newer version: left out of the replayed log
                log.append((record.get("time"), event))
                if isinstance(event, NonFiniteStep):
                    marks.append(event)
        return RunHistory(
            log=log,
            path=self.path,
            metrics=[StepMetrics.from_dict(m) for m in self.read_metrics() if "loss" in m],
            evals=[EvalLogged(int(e["step"]), float(e["eval_loss"])) for e in read_jsonl(self.evals_path)],
            started=event_from_dict(started) if started else None,
            status=self.read_status(),
            marks=marks,
            probes=[event_from_dict(p) for p in read_jsonl(self.probes_path) if p.get("type") == "probes"],
        )

    def truncate_records(self, last_step: int) -> None:
        """Keep only metrics, evaluations and probe answers up to `last_step`, so a resumed run logs each step once."""
        for path in (self.metrics_path, self.evals_path, self.probes_path):
            if not path.exists():
                continue
            kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= last_step]
            write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    # ---- checkpoints ----
    def checkpoints(self) -> list[tuple[int, Path]]:
        found = []
        if self.checkpoints_dir.is_dir():
            for child in self.checkpoints_dir.iterdir():
                match = CHECKPOINT_RE.match(child.name)
                if match and (child / "trainer_state.json").is_file():
                    found.append((int(match.group(1)), child))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def resume_point(self) -> tuple[Path | None, int, float]:
        """(latest checkpoint, its step, training seconds so far): where a resumed run continues."""
        latest = self.latest_checkpoint()
        if latest is None:
            return None, 0, 0.0
        meta = read_checkpoint_meta(latest)
        return latest, int(meta.get("step") or latest.name.split("-")[-1]), float(meta.get("elapsed_s", 0.0))

    def planned_steps(self, config: RunConfig) -> int | None:
        """The run's planned total: its config's max_steps, else what its latest checkpoint planned."""
        latest = self.latest_checkpoint()
        return config.train.max_steps or (read_checkpoint_meta(latest).get("total_steps") if latest else None)

    def check_resumable(self, config: RunConfig) -> None:
        """A run that has trained every planned step has nothing to resume: a resume would train
        one more step each time. Extending it is the way to train more. (Without its final adapter,
        killed while saving it, the resume only writes the adapter.)"""
        latest, step, _ = self.resume_point()
        planned = self.planned_steps(config)
        if latest is not None and planned and step >= planned and self.adapter_dir.exists():
            raise RunFinishedError(
                f"{self.path.name} is finished (step {step} of {planned}): nothing to resume. To train more steps, "
                f"extend it: qlora-studio train --resume {self.path} --extend N (in the window: Train more, "
                "on the Runs page)")

    def extended_config(self, steps: int, overrides: list[str] | None = None) -> RunConfig:
        """The run's config with `steps` more than it planned (resuming from its latest checkpoint)."""
        config = self.load_config(overrides)
        planned = self.planned_steps(config)
        if not planned:
            raise UserError("extending needs a run that has saved a checkpoint")
        return config.with_overrides({"train.max_steps": int(planned) + steps}, str(self.config_path))

    def prune_checkpoints(self, keep: int | None) -> None:
        if keep is None:
            return
        for _, path in self.checkpoints()[:-keep]:
            # renamed first, so a kill mid-delete never leaves a half checkpoint under a valid name
            trash = path.with_name(f".trash-{path.name}")
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)


class RunFinishedError(UserError):
    """Resuming a run that has trained all its planned steps."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    if not path.exists():
        return records
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash mid-write
    return records


def read_checkpoint_meta(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass
class RunHistory:
    path: Path
    metrics: list[StepMetrics]
    evals: list[EvalLogged]
    started: RunStarted | None
    status: dict[str, Any]
    marks: list[NonFiniteStep] = field(default_factory=list)  # steps whose loss or gradients were NaN/Inf
    log: list[tuple[float | None, Event]] = field(default_factory=list)  # events.jsonl: (time, event)
    probes: list[ProbesAnswered] = field(default_factory=list)


@dataclass
class RunSummary:
    path: Path
    name: str
    status: str
    step: int
    total_steps: int | None
    final_loss: float | None
    model: str
    quantization: str
    lora: str
    started_at: float | None
    elapsed_s: float | None
    peak_vram_gb: float | None
    reason: str | None
    resumable: bool
    method: str = "sft"  # train.method


def list_runs(output_dir: str | Path | None = None) -> list[RunSummary]:
    """Every run folder under `output_dir` (default: the default runs folder), newest first."""
    root = Path(output_dir).expanduser() if output_dir else default_runs_dir()
    if not root.is_dir():
        return []
    summaries = []
    for child in root.iterdir():
        if child.is_dir() and (child / "config.yaml").is_file():
            summaries.append(summarize_run(child))
    summaries.sort(key=lambda s: s.started_at or 0, reverse=True)
    return summaries


def summarize_run(path: Path) -> RunSummary:
    run = RunFolder(path)
    status = run.read_status()
    try:
        config = run.load_config()
        model = config.model.name_or_path
        quant = QuantizationReport.planned(config.quantization).short_label
        lora = f"r{config.lora.r} {config.lora.target_modules if isinstance(config.lora.target_modules, str) else 'custom'}"
        method = config.train.method
    except UserError:
        model, quant, lora, method = "?", "?", "?", "sft"
    effective = run.effective_status() if status else "interrupted"
    return RunSummary(
        path=path,
        name=path.name,
        status=effective,
        step=int(status.get("step", 0)),
        total_steps=status.get("total_steps"),
        final_loss=status.get("final_loss"),
        model=model,
        quantization=quant,
        lora=lora,
        started_at=status.get("started_at") or path.stat().st_mtime,
        elapsed_s=status.get("elapsed_s"),
        peak_vram_gb=status.get("peak_vram_gb"),
        reason=status.get("reason"),
        resumable=effective in ("stopped", "interrupted", "failed", "finished") and run.latest_checkpoint() is not None,
        method=method,
    )


def _process_alive(pid: Any, host: Any) -> bool:
    if not isinstance(pid, int):
        return False
    if host and host != socket.gethostname():
        return True  # another machine's run: we cannot tell, so trust the record
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

