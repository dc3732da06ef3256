import pytest
import yaml

from qlora_studio.core.config import RunConfig, commented_yaml, field_help, load_config
from qlora_studio.core.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_demo_and_documented():
    config = RunConfig()
    assert config.model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config.quantization.mode == "4bit" and config.quantization.double_quant
    assert config.train.gradient_checkpointing
    assert config.model.trust_remote_code is False
    assert "bits per weight" in field_help("quantization.double_quant")


def test_yaml_round_trip(tmp_path):
    path = write(tmp_path, "quantization: {mode: 8bit}\nlora: {r: 32, target_modules: [q_proj, v_proj]}\ntrain: {max_steps: 7}\n")
    config = load_config(path)
    assert config.quantization.mode == "8bit"
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    config.save(tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again == config


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "lora:\n  rank: 8\n"))
    message = str(info.value)
    assert "cfg.yaml" in message and "unknown key 'lora.rank'" in message and "did you mean 'lora.r'" in message


def test_unknown_section_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'quantization'"):
        load_config(write(tmp_path, "quantisation:\n  mode: 4bit\n"))


def test_bad_choice_names_key_value_and_choices(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "quantization:\n  mode: int4\n"))
    message = str(info.value)
    assert "quantization.mode" in message and "'int4'" in message and "4bit, 8bit, none" in message


def test_range_error_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"lora.dropout: 1.5: input should be less than 1"):
        load_config(write(tmp_path, "lora: {dropout: 1.5}\n"))


def test_bad_target_modules_group(tmp_path):
    with pytest.raises(ConfigError, match="all-linear, attention, mlp"):
        load_config(write(tmp_path, "lora: {target_modules: everything}\n"))


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml:3"):
        load_config(write(tmp_path, "train:\n  epochs: 1\n  max_steps: [1, 2\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/cfg.yaml")


def test_overrides_are_typed(tmp_path):
    config = load_config(write(tmp_path, "train: {epochs: 2}\n"), ["train.max_steps=50", "quantization.double_quant=false",
                                                                    "lora.target_modules=[q_proj]"])
    assert config.train.max_steps == 50 and config.quantization.double_quant is False
    assert config.lora.target_modules == ["q_proj"]
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, ""), ["train.max_steps"])
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        RunConfig().with_overrides(["train.max_step=3"])


def test_commented_yaml_is_valid_and_documented():
    text = commented_yaml()
    assert "# Quantize the 4-bit block scales" in text
    assert RunConfig.model_validate(yaml.safe_load(text)) == RunConfig()


def test_fsdp_with_8bit_is_rejected():
    with pytest.raises(ConfigError, match="fsdp"):
        RunConfig().with_overrides({"distributed.strategy": "fsdp", "quantization.mode": "8bit"})


def test_bundled_presets_are_valid():
    from qlora_studio.resources import preset_paths

    presets = preset_paths()
    assert "demo" in presets and len(presets) >= 4
    for name, path in presets.items():
        config = load_config(path)
        assert config.quantization.mode == "4bit" and config.quantization.double_quant, name
    demo = load_config(presets["demo"])
    assert demo.data.path == "sample:dates" and demo.model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
