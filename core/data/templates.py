"""Which chat template renders the conversations: the tokenizer's own, or a named one for base models.

The chosen template is saved with the adapter's tokenizer so inference renders prompts exactly as
training did. The named templates themselves are a table in `config.choices`.
"""

from __future__ import annotations

from qlora_studio.core.config.choices import CHAT_TEMPLATES, FALLBACK_TEMPLATE


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
        return CHAT_TEMPLATES[FALLBACK_TEMPLATE], FALLBACK_TEMPLATE, warning
    return CHAT_TEMPLATES[setting], setting, None  # the schema admits only the table's names
