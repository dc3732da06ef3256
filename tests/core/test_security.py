"""Nothing runs or leaks without the user's consent: pickled weights, a model's own code, YAML tags,
shell commands, the Hub token, and the network when HF_HUB_OFFLINE is set."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qlora_studio.core.cli import main
from qlora_studio.core.errors import ModelLoadError, UserError

ROOT = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_" + "Q" * 12 + "fake" + "7" * 18


def pickled_copy(model: Path, target: Path) -> Path:
    """The tiny model with its weights as pytorch_model.bin only, like many older Hub repos."""
    target.mkdir()
    for path in model.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, target / path.name)
    torch.save(load_file(model / "model.safetensors"), target / "pytorch_model.bin")
    return target


def test_a_model_with_only_pickled_weights_needs_allow_pickle(tiny_config, tiny_model, tmp_path, capsys, monkeypatch):
    from qlora_studio.core.model.consent import CONSENT_VARIABLE

    monkeypatch.setenv(CONSENT_VARIABLE, "")  # restored after the test: consent never outlives it
    folder = pickled_copy(tiny_model, tmp_path / "pickled")
    path = tmp_path / "cfg.yaml"
    tiny_config.with_overrides({"model.name_or_path": str(folder), "train.max_steps": 2}).save(path)

    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: model.name_or_path: {folder} has only pickled weights (pytorch_model.bin), which can run code when "
        "loaded; convert them to safetensors, or allow it with --allow-pickle (the window asks)")
    assert "Traceback" not in err

    assert main(["train", str(path), "--allow-pickle"]) == 0  # an explicit yes, for this command
    assert "finished at step 2/2" in capsys.readouterr().err


def test_a_models_own_code_never_runs_without_trust(tiny_model, tmp_path):
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.model.info import model_info
    from qlora_studio.core.model.loading import load_for_training

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "code-ran"
    (folder / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-llama", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))

    expected = f"model.name_or_path: {folder} ships its own Python code (auto_map in config.json), which runs only " \
               f"with model.trust_remote_code: true; turn it on only if you trust the code in {folder}"
    with pytest.raises(ModelLoadError) as info:
        model_info(str(folder))  # what the window reads for the model line
    assert str(info.value) == expected
    with pytest.raises(ModelLoadError, match="ships its own Python code"):
        load_for_training(RunConfig.model_validate({"model": {"name_or_path": str(folder)}, "train": {"device": "cpu"}}))
    assert not marker.exists()


def test_yaml_tags_never_build_python_objects(tmp_path):
    from qlora_studio.core.config import load_config

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and not marker.exists()
    unsafe = re.compile(r"yaml\.(unsafe_load|full_load|load_all|load)\(|Loader=yaml\.(Loader|FullLoader|UnsafeLoader)")
    offenders = [str(p.relative_to(ROOT)) for p in sources() if unsafe.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def sources() -> list[Path]:
    return [p for folder in ("core", "gui", "bench", "docs") for p in (ROOT / folder).rglob("*.py")]


def test_no_shell_runs_a_string():
    """Subprocesses get argument lists (no shell parses a path or a model name the user typed)."""
    problems = []
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                problems.append(f"{where} {name}")
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                problems.append(f"{where} shell=")
            if name.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.JoinedStr, ast.BinOp)):
                problems.append(f"{where} a command built as one string")
    assert problems == []


def test_a_hub_token_never_reaches_run_folders_events_or_errors(tiny_config, monkeypatch, capsys):
    from qlora_studio.core.redact import redact
    from qlora_studio.core.runs import events as ev
    from qlora_studio.core.training.runner import run_training

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    seen = []

    def leaky_sink(event):  # a library error quoting the token, in the middle of a run
        seen.append(json.dumps(event.to_dict(), default=str))
        if isinstance(event, ev.StepLogged) and event.metrics.step == 2:
            raise RuntimeError(f"401 Unauthorized: Authorization: Bearer {FAKE_TOKEN}")

    result = run_training(tiny_config.with_overrides({"train.max_steps": 4}), leaky_sink)
    assert result.status == "failed" and "Bearer hf_***" in result.error
    assert FAKE_TOKEN not in result.error + result.details + "".join(seen)
    for path in Path(result.run_dir).rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path

    assert main(["train", f"/nowhere/{FAKE_TOKEN}.yaml"]) == 2  # the CLI's one-line error
    assert FAKE_TOKEN not in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN")
    assert redact(f"see https://x/?token={FAKE_TOKEN}&a=1") == "see https://x/?token=hf_***&a=1"  # by its shape too


def test_hf_hub_offline_means_no_connection_at_all(monkeypatch):
    from huggingface_hub import constants

    from qlora_studio.core.config.schema import DataSettings, ModelSettings
    from qlora_studio.core.data.sources import load_parts
    from qlora_studio.core.errors import DataError
    from qlora_studio.core.model.info import model_info
    from qlora_studio.core.model.sources import resolve_model_source

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py sets HF_HUB_OFFLINE=1 before anything imports the Hub client
    attempts = []

    def tripwire(self, address):
        attempts.append(address)
        raise OSError("network used while HF_HUB_OFFLINE is set")

    monkeypatch.setattr(socket.socket, "connect", tripwire)
    monkeypatch.setattr(socket.socket, "connect_ex", tripwire)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set. Unset HF_HUB_OFFLINE to download it"):
        resolve_model_source(ModelSettings(name_or_path="someone/not-cached-model"))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        model_info("someone/not-cached-model")
    with pytest.raises(DataError, match="cannot be fetched from the Hub: HF_HUB_OFFLINE is set"):
        load_parts(DataSettings(path="someone/not-cached-data"))
    assert attempts == []


CONSENT_MARK = "--- consent from here on ---"
HUB_KERNEL_PROBE = f"""
import os, sys
import qlora_studio.core  # installs the gate, as every entry point does
from qlora_studio.core.hub_kernels import HubKernelRefused, allow_hub_kernels
import bitsandbytes  # on a CPU with AVX512-BF16 its CPU backend asks for a Hub kernel here
import kernels


def fetch():
    try:
        kernels.get_kernel("kernels-community/quantization-bitsandbytes", version=1)
    except HubKernelRefused:
        print("refused", flush=True)
    except Exception as exc:  # the Hub stand-in has no such kernel
        print("fetched", type(exc).__name__, flush=True)


fetch()
print("{CONSENT_MARK}", file=sys.stderr, flush=True)
sys.stdin.readline()  # the test looks at the Hub's requests before the yes
allow_hub_kernels()
fetch()
"""


def test_no_hub_kernel_is_fetched_or_reported_without_consent(tmp_path):
    """transformers >= 5.25 installs `kernels`; bitsandbytes and transformers call it on their own.
    One fresh process (the gate is installed at import) asks without consent, then with it."""
    from fakehub import FakeHub

    assert importlib.util.find_spec("kernels") is not None, "transformers brings kernels"
    with FakeHub({}) as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        env.pop("QLORA_STUDIO_ALLOW_HUB_KERNELS", None)
        probe = subprocess.Popen([sys.executable, "-c", HUB_KERNEL_PROBE], env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            refused = probe.stdout.readline()
            requests_before_consent = list(hub.requests)
            out, err = probe.communicate("yes\n", timeout=120)
        finally:
            probe.kill()
        without_consent, _, with_consent = err.partition(CONSENT_MARK + "\n")
        assert refused.strip() == "refused" and without_consent == "" and requests_before_consent == [], err
        # the same call with consent does reach the (stand-in) Hub: the probe is live
        assert out.startswith("fetched") and hub.requests, with_consent
