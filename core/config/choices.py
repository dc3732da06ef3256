"""Every closed set of choices a config key offers, one table per key, with what each choice means.

The schema's `Literal` types are built from these tables and the window's combo boxes from the
schema, so adding an optimizer, a LoRA target group or a chat template is one new row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerChoice:
    trainer_optim: str  # transformers' `optim` name on a CUDA GPU
    trainer_optim_cpu: str  # ... and on the CPU
    state_bytes_per_param: int  # GPU memory of its states per trainable parameter (paged: 0, they can leave the GPU)
    paged: bool
    doc: str


# In order of preference when several fit (make-it-fit tries them in this order).
OPTIMIZERS: dict[str, OptimizerChoice] = {
    "adamw": OptimizerChoice("adamw_torch_fused", "adamw_torch_fused", 8, False, "AdamW, fused kernels"),
    "adamw_8bit": OptimizerChoice("adamw_bnb_8bit", "adamw_bnb_8bit", 2, False, "bitsandbytes' 8-bit AdamW states"),
    # Paging is CUDA's unified memory: on the CPU the same optimizer runs unpaged (bitsandbytes would fall back
    # to that itself, with a warning).
    "paged_adamw_8bit": OptimizerChoice("paged_adamw_8bit", "adamw_bnb_8bit", 0, True,
                                        "8-bit states in unified memory, moved to CPU RAM under pressure"),
    "paged_adamw_32bit": OptimizerChoice("paged_adamw_32bit", "adamw_torch_fused", 0, True,
                                         "32-bit states in unified memory, moved to CPU RAM under pressure"),
}

@dataclass(frozen=True)
class ReporterChoice:
    module: str  # what must be importable (transformers' integration checks the same)
    extra: str  # the pip extra that installs it: pip install "qlora-studio[<extra>]"
    doc: str


# Where metrics go besides the run folder (transformers' `report_to` names).
REPORTERS: dict[str, ReporterChoice] = {
    "tensorboard": ReporterChoice("tensorboard", "tensorboard", "event files in <run folder>/tensorboard"),
    "wandb": ReporterChoice("wandb", "wandb", "Weights & Biases; offline in <run folder>/wandb without network or login"),
}

# LoRA target groups: substrings of a linear layer's full name that put it in the group
# (empty: every linear layer but the output head).
LORA_TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "all-linear": (),
    "attention": (".self_attn.", ".attention.", ".attn.", ".self_attention."),
    "mlp": (".mlp.", ".feed_forward.", ".ffn.", ".block_sparse_moe."),
}

# Chat templates for models whose tokenizer has none (base models), as Jinja in the form
# transformers' `apply_chat_template` renders (`bos_token`, `eos_token`, `add_generation_prompt`).
_SYSTEM_INTO_FIRST_USER = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_text = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_text = '' %}{% set loop_messages = messages %}{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "llama2": (
        _SYSTEM_INTO_FIRST_USER
        + "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system_text %}"
        "{{ bos_token + '[INST] <<SYS>>\\n' + system_text | trim + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "mistral": (
        _SYSTEM_INTO_FIRST_USER
        + "{{ bos_token }}{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + (system_text if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "gemma": (
        _SYSTEM_INTO_FIRST_USER
        + "{{ bos_token }}{% for message in loop_messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + (system_text if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "alpaca": (
        _SYSTEM_INTO_FIRST_USER
        + "{{ system_text }}{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
}


FALLBACK_TEMPLATE = "chatml"  # for data.chat_template auto when the tokenizer has no template
