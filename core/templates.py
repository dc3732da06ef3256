"""Named chat templates for models whose tokenizer has none (base models).

Written as Jinja in the form transformers' `apply_chat_template` renders (`bos_token`,
`eos_token`, `add_generation_prompt`); the chosen one is saved with the adapter's tokenizer so
inference renders prompts exactly as training did.
"""

from __future__ import annotations

from qlora_studio.core.errors import ConfigError

_SYSTEM_INTO_FIRST_USER = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_text = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_text = '' %}{% set loop_messages = messages %}{% endif %}"
)

NAMED_TEMPLATES: dict[str, str] = {
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

FALLBACK_TEMPLATE = "chatml"


def choose_template(tokenizer, setting: str) -> tuple[str, str, str | None]:
    """(template text, its name, a warning or None) for the `data.chat_template` setting."""
    if setting == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: the default one is for chat
            own = own.get("default")
        if own:
            return own, "tokenizer", None
        warning = (
            f"the tokenizer has no chat template (a base model?); using the {FALLBACK_TEMPLATE} template. "
            "Set data.chat_template to pick another; the adapter is saved with it."
        )
        return NAMED_TEMPLATES[FALLBACK_TEMPLATE], FALLBACK_TEMPLATE, warning
    if setting not in NAMED_TEMPLATES:
        raise ConfigError(f"data.chat_template: {setting!r} is not known; use auto or one of {', '.join(NAMED_TEMPLATES)}")
    return NAMED_TEMPLATES[setting], setting, None
