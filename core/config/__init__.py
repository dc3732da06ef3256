"""The run config: its schema (`schema`), the tables of choices it offers (`choices`), and its life
as YAML files and documentation (`files`). Everything a user can set is declared here."""

from qlora_studio.core.config.choices import CHAT_TEMPLATES, LORA_TARGET_GROUPS, OPTIMIZERS
from qlora_studio.core.config.files import absolute_paths, choices, commented_yaml, field_help, load_config
from qlora_studio.core.config.schema import (
    DEMO_DATA,
    DEMO_MODEL_ID,
    SAMPLE_PREFIX,
    DataSettings,
    DistributedSettings,
    LoraSettings,
    ModelSettings,
    QuantizationSettings,
    RunConfig,
    TrainSettings,
    apply_overrides,
    describe_validation_error,
    validate_config,
)

__all__ = [
    "CHAT_TEMPLATES", "DEMO_DATA", "DEMO_MODEL_ID", "LORA_TARGET_GROUPS", "OPTIMIZERS", "SAMPLE_PREFIX",
    "DataSettings", "DistributedSettings", "LoraSettings", "ModelSettings", "QuantizationSettings", "RunConfig",
    "TrainSettings", "absolute_paths", "apply_overrides", "choices", "commented_yaml", "describe_validation_error",
    "field_help", "load_config", "validate_config",
]
