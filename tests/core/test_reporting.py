"""Metrics to TensorBoard (read back with TensorBoard's own EventAccumulator) and W&B, with our real
tokens/s and VRAM in the same streams; CSV export of a run's metrics."""

from __future__ import annotations

import csv
import os

import pytest
from qlora_studio.core.errors import ConfigError
from qlora_studio.core.training import reporting
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder, read_jsonl

pytest.importorskip("tensorboard")


def test_tensorboard_gets_the_loss_and_our_tokens_per_s(tiny_config, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_NeverWriteThisToken")
    config = tiny_config.with_overrides({"train.report_to": ["tensorboard"], "train.max_steps": 4,
                                         "train.save_every_steps": 4})
    result = run_training(config)
    assert result.status == "finished", result.error
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set only while the Trainer was built
    run = RunFolder(result.run_dir)
    scalars = reporting.read_scalars(reporting.tensorboard_dir(run.path))
    metrics = run.read_metrics()
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx([m["loss"] for m in metrics])
    # the same real tokens/s the run folder and the window show, not transformers' running average
    assert [value for _, value in scalars["train/tokens_per_s"]] == pytest.approx([m["tokens_per_s"] for m in metrics])
    assert "eval/loss" in scalars
    assert not (run.checkpoints_dir / "runs").exists()  # not transformers' default <output_dir>/runs/<date>
    # nothing the run wrote holds the Hub token (TrainingArguments redacts its own token fields)
    for path in run.path.rglob("*"):
        if path.is_file():
            assert b"hf_NeverWriteThisToken" not in path.read_bytes(), path

    out = run.path / "metrics.csv"
    assert reporting.export_metrics_csv(run.path, out) == 4
    rows = list(csv.DictReader(out.open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and float(rows[0]["tokens_per_s"]) > 0
    evals = {int(e["step"]): e["eval_loss"] for e in read_jsonl(run.evals_path)}
    assert float(rows[3]["eval_loss"]) == pytest.approx(evals[4]) and rows[0]["eval_loss"] == ""


def test_a_missing_package_is_one_line_before_loading(tiny_config, monkeypatch):
    monkeypatch.setattr(reporting, "installed", lambda target: target != "wandb")
    result = run_training(tiny_config.with_overrides({"train.report_to": ["wandb"]}))
    assert result.status == "failed" and result.cause.value == "user"
    assert result.error == 'train.report_to: wandb is not installed: pip install "qlora-studio[wandb]"'
    with pytest.raises(ConfigError, match="report_to"):
        tiny_config.with_overrides({"train.report_to": ["comet"]})


def test_wandb_logs_offline_into_the_run_folder_without_network(tiny_config, monkeypatch):
    """The real wandb (an optional extra: skipped when it is not installed), with no login: offline."""
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", os.devnull)
    monkeypatch.setenv("WANDB_SILENT", "true")
    events = []
    result = run_training(tiny_config.with_overrides({"train.report_to": ["wandb"], "train.max_steps": 2}),
                          lambda e: events.append(e))
    assert result.status == "finished", result.error
    (offline,) = (RunFolder(result.run_dir).path / "wandb").glob("offline-run-*")
    records = b"".join(p.read_bytes() for p in offline.glob("*.wandb"))
    assert b"train/loss" in records and b"train/tokens_per_s" in records
    assert any("wandb sync" in getattr(e, "message", "") for e in events)
    import wandb

    assert wandb.run is None  # finished with the session
