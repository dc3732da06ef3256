"""The `qlora-studio` command: training from a config file, and one-line errors for user mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qlora_studio.core.cli import main


def cli(*args, timeout=600):
    """The installed entry point of the Python running the tests (not whichever is first on PATH: an
    older install elsewhere would answer), or the module where the script is not installed."""
    exe = Path(sys.executable).with_name("qlora-studio")
    command = [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "qlora_studio.core.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path, tiny_config, **train):
    data = tiny_config.model_dump(mode="json")
    data["train"].update(train)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_command_writes_a_run_folder(tmp_path, tiny_config, capsys):
    # The one run of the installed entry point in a fresh process (its start-up, its stderr, no warning
    # from a library's import); the commands after it run in this process, which saves a start each.
    path = write_config(tmp_path, tiny_config)
    out = cli("train", str(path))
    assert out.returncode == 0, out.stderr
    assert "finished at step 12/12" in out.stderr and "adapter" in out.stderr
    # stages before step 1, then one line per tenth of the run; no bar redrawn into a log (issue 12)
    assert "preparing   tokenizing 400 rows" in out.stderr and "preparing   running the first step" in out.stderr
    assert out.stderr.count("step 12/12  loss") == 1 and "100%|" not in out.stderr
    assert "gemm_4bit_forward" not in out.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / "config.yaml").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))

    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    listing = capsys.readouterr()
    assert run.name in listing.out and "finished" in listing.out

    assert main(["train", "--resume", str(run), "--extend", "3", "--json-events"]) == 0
    extended = capsys.readouterr()
    steps = [json.loads(line)["metrics"]["step"] for line in extended.out.splitlines() if '"type": "step"' in line]
    assert steps == [13, 14, 15], extended.err

    assert main(["train", "--resume", str(run)]) == 2  # finished: nothing to resume, say how to train more
    again = capsys.readouterr()
    assert again.err.strip().splitlines() == [
        f"error: {run.name} is finished (step 15 of 15): nothing to resume. To train more steps, extend it: "
        f"qlora-studio train --resume {run} --extend N (in the window: Train more, on the Runs page)"]


@pytest.mark.parametrize("content, expected", [
    (None, "config file not found"),
    ("lora:\n  rank: 8\n", "did you mean 'lora.r'"),
    ("data:\n  path: /nowhere/train.jsonl\n", "/nowhere/train.jsonl: no such file or folder"),
    ("model:\n  name_or_path: ./no/such/model\n", "no such folder"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, capsys, tiny_model, content, expected):
    path = tmp_path / "cfg.yaml"
    if content is not None:
        if "model:" not in content:
            content += f"model:\n  name_or_path: {tiny_model}\n"
        content += f"output_dir: {tmp_path / 'runs'}\n"
        path.write_text(content)
    code = main(["train", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("resume with")]
    assert "Traceback" not in captured.err
    assert expected in lines[-1], captured.err
    assert lines[-1].startswith(("error:", "error: "))


def test_train_without_config_explains(capsys):
    assert main(["train"]) == 2
    assert "give a config file" in capsys.readouterr().err


def test_init_writes_a_documented_config(tmp_path, capsys):
    target = tmp_path / "my.yaml"
    assert main(["init", str(target)]) == 0
    text = target.read_text()
    assert "# Quantize the 4-bit block scales" in text and "sample:dates" in text
    assert main(["init", str(target)]) == 2  # no silent overwrite
    assert "--force" in capsys.readouterr().err


INIT_MARKER = "<!-- the output of `qlora-studio init -` -->"


def test_the_readme_config_block_is_what_init_writes(capsys):
    """Issue 12: `init` wrote the demo while the README showed another config. The README's block
    (in README.md once merged, in docs/notes/firsthour.md until then) is init's output, verbatim."""
    from pathlib import Path

    assert main(["init", "-"]) == 0
    written = capsys.readouterr().out
    root = Path(__file__).resolve().parents[2]
    blocks = []
    for doc in [root / "README.md", *sorted((root / "docs" / "notes").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
        if INIT_MARKER in text:
            after = text.split(INIT_MARKER, 1)[1]
            blocks.append((doc.name, after.split("```yaml\n", 1)[1].split("```", 1)[0]))
    assert blocks, f"no document shows the config block after {INIT_MARKER}"
    for name, block in blocks:
        assert block == written, f"{name}: regenerate the block with `qlora-studio init -`"


def test_generate_with_a_trained_adapter(tiny_run, capsys):
    # the shared finished run (tiny_config's settings): generate only reads it
    assert main(["generate", tiny_run.run_dir, "Normalize the date: March 5, 2021", "--max-new-tokens", "12"]) == 0
    assert "tokens" in capsys.readouterr().err
