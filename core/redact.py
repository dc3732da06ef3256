"""A Hugging Face token never leaves the process: it is cut out of every message, traceback and
record we write or show (an exception from a library may quote a header or a URL holding it)."""

from __future__ import annotations

import os
import re

# User access tokens look like hf_ followed by 30+ letters and digits.
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN")
HIDDEN = "hf_***"


def known_tokens() -> list[str]:
    """The tokens this process could use: from the environment and from `hf auth login`'s file."""
    tokens = [os.environ.get(name, "").strip() for name in TOKEN_VARIABLES]
    try:
        from huggingface_hub import get_token

        tokens.append((get_token() or "").strip())
    except Exception:  # noqa: BLE001 - no hub client or an unreadable token file: nothing more to hide
        pass
    return [t for t in tokens if len(t) >= 8]


def redact(text: str) -> str:
    if not text:
        return text
    for token in known_tokens():
        text = text.replace(token, HIDDEN)
    return TOKEN_PATTERN.sub(HIDDEN, text)
