"""`qlora-studio import-config`: axolotl and LLaMA-Factory QLoRA configs (their own example files, see
import_examples/) become configs that validate and train, and every key not carried over is named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from qlora_studio.core.cli import main
from qlora_studio.core.config import load_config, validate_config
from qlora_studio.core.config.importers import (
    EMPTY,
    ConfigImportError,
    detect_tool,
    import_config,
    import_dict,
)
from qlora_studio.core.training.runner import run_training

EXAMPLES = Path(__file__).parent / "import_examples"
AXOLOTL_EXAMPLES = sorted(EXAMPLES.glob("axolotl_*.yml"))
LLAMAFACTORY_EXAMPLES = sorted((EXAMPLES / "llamafactory").glob("*.yaml"))


def source_keys(carried: list[str], dropped: list) -> set[str]:
    """Top-level source keys named by the carried lines and the dropped entries."""
    named = set()
    for line in carried:
        if not line.startswith("default:"):
            for part in line.split(" -> ")[0].split("/"):
                named.add(re.split(r"[.\[]", part.strip())[0])
    return named | {re.split(r"[.\[]", key)[0] for key, _value, _why in dropped}


@pytest.mark.parametrize("path", AXOLOTL_EXAMPLES + LLAMAFACTORY_EXAMPLES, ids=lambda p: p.name)
def test_every_example_imports_validates_and_accounts_for_every_key(path):
    raw = yaml.safe_load(path.read_text())
    assert detect_tool(raw) == ("axolotl" if path.name.startswith("axolotl") else "llamafactory")
    imported = import_config(path)  # validated through the schema
    assert set(imported.raw) <= {"model", "quantization", "lora", "data", "train", "output_dir", "run_name"}
    missing = set(raw) - source_keys(imported.carried, imported.dropped)
    assert not missing, f"source keys neither carried nor dropped: {missing}"
    assert all(why for _key, _value, why in imported.dropped)


def test_axolotl_llama3_qlora_mapping():
    imported = import_config(EXAMPLES / "axolotl_llama3_qlora.yml")
    config = imported.raw
    # flash-attn is not installed on the test machine: the import says so and keeps attention runnable
    assert config["model"] == {"name_or_path": "NousResearch/Meta-Llama-3-8B", "attn_implementation": "auto"}
    assert imported.replaced == [
        "attn_implementation: flash_attention_2 -> model.attn_implementation = auto: flash_attention_2 needs the "
        "flash-attn package (CUDA GPUs only), which is not installed here; auto attention computes the same (varlen "
        "on packed rows, SDPA otherwise). To keep the file's choice, install it and set "
        "model.attn_implementation: flash_attention_2"]
    assert config["quantization"] == {"mode": "4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}
    assert config["lora"] == {"r": 32, "alpha": 16.0, "dropout": 0.05, "target_modules": "all-linear"}
    data = config["data"]
    assert (data["path"], data["format"], data["chat_template"]) == ("aaditya/alpaca_subset_1", "alpaca", "alpaca")
    assert data["max_length"] == 4096 and data["validation_split"] == 0.0 and data["overlength"] == "drop"
    train = imported.config.train
    assert (train.micro_batch_size, train.grad_accum, train.epochs) == (2, 4, 4.0)
    assert (train.optimizer, train.lr_scheduler, train.warmup_ratio) == ("paged_adamw_32bit", "cosine", 0.1)
    assert train.learning_rate == pytest.approx(2e-4) and train.gradient_checkpointing is True
    assert (imported.config.output_dir, imported.config.run_name) == ("outputs", "qlora-out")
    assert {"sample_packing", "model_type", "logging_steps", "special_tokens"} <= {d[0] for d in imported.not_carried}
    assert ("wandb_project", None, EMPTY) in imported.dropped


def test_axolotl_gemma2_chat_template_dataset():
    imported = import_config(EXAMPLES / "axolotl_gemma2_qlora.yml")
    data = imported.raw["data"]
    assert (data["format"], data["columns"], data["chat_template"]) == ("sharegpt", {"messages": "conversations"}, "gemma")
    assert ("datasets[0].drop_system_message", True, "system messages are kept") in imported.dropped


def test_llamafactory_defaults_are_written_out_and_dataset_info_is_followed():
    path = EXAMPLES / "llamafactory" / "qwen3_lora_sft_bnb_npu.yaml"
    imported = import_config(path)
    config = imported.raw
    assert config["quantization"] == {"mode": "4bit", "double_quant": False, "compute_dtype": "bfloat16", "quant_type": "nf4"}
    assert config["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"}  # alpha = 2 x rank
    assert "default: lora.alpha = 16.0 (LLaMA-Factory default: 2 x lora_rank)" in imported.carried
    assert config["data"]["path"] == str((path.parent / "data" / "identity.json").resolve())
    assert any(d[0] == "dataset" and d[1] == "alpaca_en_demo" for d in imported.dropped)  # one data.path
    assert (config["output_dir"], config["run_name"]) == ("saves/qwen3-4b/lora", "sft")


def lf(extra: dict) -> dict:
    return {"model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "stage": "sft", "finetuning_type": "lora",
            "template": "llama3", "quantization_bit": 4, "dataset_dir": "llamafactory/data", **extra}


def ax(extra: dict) -> dict:
    return {"base_model": "org/model", "adapter": "qlora", "load_in_4bit": True, "learning_rate": 0.0002,
            "datasets": [{"path": "data/train.jsonl", "type": "chat_template"}], **extra}


def test_llamafactory_rules():
    config, _, dropped = import_dict(lf({"dataset": "ultrachat_200k", "report_to": "wandb,swanlab"}), source_dir=EXAMPLES)
    assert (config["data"]["path"], config["data"]["split"], config["data"]["format"]) == (
        "HuggingFaceH4/ultrachat_200k", "train_sft", "messages")
    assert config["train"]["report_to"] == ["wandb"] and ("report_to", "swanlab") in {d[:2] for d in dropped}
    config, _, dropped = import_dict(lf({"dataset": "my_private_set"}), source_dir=EXAMPLES)
    assert config["data"]["path"] == "my_private_set" and any("not an entry of" in d[2] for d in dropped)
    config, _, _ = import_dict(lf({"dataset": "identity", "eval_dataset": "alpaca_en_demo", "lora_target": "q_proj, v_proj",
                                   "val_size": 500, "hf_hub_token": "hf_secret"}), source_dir=EXAMPLES)
    assert config["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert config["data"]["validation_path"].endswith("alpaca_en_demo.json") and config["data"]["validation_split"] == 0.0
    assert "hf_secret" not in json.dumps(config)  # a token is never carried
    validate_config(config)
    with pytest.raises(ConfigImportError, match="stage: ppo cannot be imported"):
        import_dict(lf({"dataset": "identity", "stage": "ppo"}), source_dir=EXAMPLES)


def test_llamafactory_preference_stages(tmp_path):
    """stage dpo / kto with LLaMA-Factory's pref_* settings and its ranking datasets (ShareGPT and alpaca)."""
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "pairs": {"file_name": "pairs.json", "ranking": True, "columns": {"prompt": "question", "chosen": "good",
                                                                          "rejected": "bad"}},
    }))
    config, _, _ = import_dict(lf({"dataset": "dpo_en_demo", "stage": "dpo", "pref_beta": 0.2, "pref_ftx": 0.5,
                                   "dataset_dir": str(tmp_path)}), source_dir=tmp_path)
    assert config["train"]["method"] == "dpo" and config["train"]["dpo"] == {"beta": 0.2, "sft_weight": 0.5}
    assert (config["data"]["format"], config["data"]["columns"]) == ("preference", {"prompt": "conversations"})
    validate_config(config)
    config, _, _ = import_dict(lf({"dataset": "pairs", "stage": "dpo", "pref_loss": "orpo", "dataset_dir": str(tmp_path)}),
                               source_dir=tmp_path)
    assert config["train"]["method"] == "orpo"
    assert config["data"]["columns"] == {"prompt": "question", "chosen": "good", "rejected": "bad"}
    validate_config(config)
    # the ShareGPT pair rows LLaMA-Factory ships read as pairs
    from qlora_studio.core.config.schema import DataSettings
    from qlora_studio.core.data.method_data import load_method_rows

    rows = tmp_path / "dpo.jsonl"
    rows.write_text(json.dumps({"conversations": [{"from": "human", "value": "Hi?"}],
                                "chosen": {"from": "gpt", "value": "Hello!"}, "rejected": {"from": "gpt", "value": "No."}}))
    _, got, _, _, bad_count, _, _ = load_method_rows(
        DataSettings(path=str(rows), format="preference", columns={"prompt": "conversations"}), "dpo")
    assert not bad_count and got[0]["chosen"] == [{"role": "assistant", "content": "Hello!"}]


def test_axolotl_rules():
    config, _, dropped = import_dict(ax({"datasets": [{"path": "d.jsonl", "type": "chat_template", "field_messages": "chat",
                                                       "chat_template": "llama3", "roles_to_train": ["assistant"]}],
                                         "use_tensorboard": True, "wandb_project": "mine"}))
    assert (config["data"]["format"], config["data"]["columns"], config["data"]["chat_template"]) == (
        "messages", {"messages": "chat"}, "llama3")
    assert config["train"]["report_to"] == ["tensorboard", "wandb"]
    config, _, dropped = import_dict(ax({"learning_rate": "2e-5", "max_steps": 200, "warmup_steps": 20,
                                         "optimizer": "lion_8bit", "lora_target_modules": ".*(q|v)_proj",
                                         "save_steps": 0.25, "bnb_config_kwargs": {"bnb_4bit_quant_type": "fp4"}}))
    train = config["train"]
    assert train["learning_rate"] == pytest.approx(2e-5) and train["warmup_ratio"] == pytest.approx(0.1)
    assert config["quantization"]["quant_type"] == "fp4"
    assert {"optimizer", "lora_target_modules", "save_steps"} <= {d[0] for d in dropped}  # dropped, not invented
    assert "optimizer" not in train and "target_modules" not in config["lora"]
    validate_config(config)
    config, _, dropped = import_dict(ax({"rl": "ipo", "rl_beta": 0.3}))
    assert config["train"]["method"] == "dpo" and config["train"]["dpo"] == {"loss_type": "ipo", "beta": 0.3}
    validate_config(config)
    config, _, dropped = import_dict(ax({"rl": "grpo", "micro_batch_size": 4, "gradient_accumulation_steps": 2,
                                         "trl": {"num_generations": 4, "reward_funcs": ["rewards.correct"]}}))
    assert config["train"]["method"] == "grpo" and config["train"]["grpo"] == {"num_generations": 4}
    assert "trl.reward_funcs" in {d[0] for d in dropped}
    validate_config(config)
    with pytest.raises(ConfigImportError, match="rl: simpo cannot be imported"):
        import_dict(ax({"rl": "simpo"}))


def test_detection_and_bad_files(tmp_path):
    with pytest.raises(ConfigImportError, match="already a QLoRA Studio config"):
        detect_tool({"model": {"name_or_path": "x"}, "lora": {"r": 8}})
    with pytest.raises(ConfigImportError, match="v1"):
        detect_tool({"model": "Qwen/Qwen3-0.6B", "peft_config": {"name": "lora"}, "quant_config": {"name": "bnb"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: [unclosed\n")
    with pytest.raises(ConfigImportError, match=r"bad.yaml:\d+: not valid YAML"):
        import_config(bad)
    unknown = tmp_path / "x.yaml"
    unknown.write_text("foo: 1\n")
    assert main(["import-config", str(unknown)]) == 2  # one line on stderr, no traceback


def alpaca_rows(n: int = 24) -> list[dict]:
    """The bundled date task as alpaca rows (instruction / input / output)."""
    from qlora_studio.resources import sample_path

    rows = []
    for line in sample_path("dates").read_text(encoding="utf-8").splitlines()[:n]:
        turns = {m["role"]: m["content"] for m in json.loads(line)["messages"]}
        rows.append({"instruction": turns["user"], "input": "", "output": turns["assistant"]})
    return rows


def train_imported(path: Path, tiny_model: Path, tmp_path: Path, **overrides):
    """Train what import-config wrote, on the tiny model, for a few steps."""
    config = load_config(path, [f"model.name_or_path={tiny_model}", "train.max_steps=2", f"output_dir={tmp_path / 'runs'}",
                                *[f"{key}={value}" for key, value in overrides.items()]])
    result = run_training(config)
    assert result.status == "finished", result.error
    assert result.step == 2 and Path(result.adapter_dir, "adapter_model.safetensors").is_file()
    return config


def test_the_cli_names_what_it_replaced_and_dropped(tmp_path, capsys):
    out = tmp_path / "my.yaml"
    assert main(["import-config", str(EXAMPLES / "axolotl_llama2_qlora.yml"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "axolotl config; 29 settings carried, 1 replaced to run here" in err and f"wrote {out}" in err
    assert "not carried: sample_packing = true" in err
    assert "  replaced: flash_attention: true -> model.attn_implementation = auto: flash_attention_2 needs" in err
    text = out.read_text()
    assert "#   sample_packing: true  -- data.packing decides" in text
    assert "# Replaced, because it cannot run on the machine that imported it:\n#   flash_attention: true" in text


def test_flash_attention_is_kept_where_flash_attn_is_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    imported = import_config(EXAMPLES / "axolotl_llama2_qlora.yml")
    assert imported.raw["model"]["attn_implementation"] == "flash_attention_2" and imported.replaced == []


def local_rows(fmt: str) -> list[dict]:
    """The date task in the format an imported config reads (its Hub dataset cannot be fetched here)."""
    if fmt == "alpaca":
        return alpaca_rows()
    assert fmt == "sharegpt", fmt
    return [{"conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
            for r in alpaca_rows()]


@pytest.mark.filterwarnings("error:Paged optimizers are not supported on CPU")  # paged maps to unpaged here
@pytest.mark.parametrize("path", AXOLOTL_EXAMPLES + LLAMAFACTORY_EXAMPLES, ids=lambda p: p.name)
def test_every_bundled_example_trains_here_after_import(path, tmp_path, tiny_model, capsys):
    """Imported as it is, on this CPU machine (no flash-attn, no GPU, two cores); only the model and
    the data point at local copies, since the Hub is out of reach in tests."""
    source = tmp_path / "source"
    (source / "data").mkdir(parents=True)
    (source / path.name).write_text(path.read_text())
    if path.parent.name == "llamafactory":  # its datasets come from data/dataset_info.json next to the file
        (source / "data" / "dataset_info.json").write_text((path.parent / "data" / "dataset_info.json").read_text())
        (source / "data" / "identity.json").write_text(json.dumps(alpaca_rows()))  # LLaMA-Factory's identity is alpaca
    out = tmp_path / "imported.yaml"
    assert main(["import-config", str(source / path.name), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    overrides = {}
    if path.parent.name != "llamafactory":
        data = tmp_path / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in local_rows(load_config(out).data.format)))
        overrides["data.path"] = data
    config = train_imported(out, tiny_model, tmp_path, **overrides)
    assert config.model.attn_implementation != "flash_attention_2" and config.data.num_proc in (None, 1, 2)
    if path.name == "qwen3_lora_sft_otfq.yaml":
        assert config.data.path == str(source / "data" / "identity.json")
        assert (config.lora.r, config.lora.alpha, config.train.grad_accum) == (8, 16.0, 8)
    if path.name == "axolotl_llama3_qlora.yml":
        assert (config.lora.r, config.lora.alpha, config.data.format, config.data.chat_template) == (32, 16.0, "alpaca", "alpaca")
