"""`qlora-studio chat`: talk to a trained adapter (or its base) in the terminal, replies streamed
token by token; one-shot with --prompt."""

from __future__ import annotations

import sys
from typing import TextIO

HELP = "commands: /reset forgets the conversation, /base and /tuned switch model, /quit (or Ctrl+D) ends"


def stream_reply(session, messages: list[dict[str, str]], sampling, base: bool, out: TextIO):
    """Print the reply as it comes; return it."""
    from qlora_studio.core.model.generation import ReplyStream

    with session.using(base):
        stream = ReplyStream(session.chat, messages, sampling)
        for text in stream:
            out.write(text)
            out.flush()
    out.write("\n")
    return stream.reply


def chat_loop(session, sampling, base: bool, system: str | None, stdin: TextIO = sys.stdin,
              out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Read user turns from stdin until it ends; each reply continues the same conversation."""
    history: list[dict[str, str]] = []
    who = lambda: "base" if base else "tuned"  # noqa: E731
    print(f"chatting with {session.ref.name} ({who()}); {HELP}", file=err)
    interactive = stdin.isatty()
    while True:
        if interactive:
            err.write(f"{who()}> ")
            err.flush()
        line = stdin.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        command = text.strip().lower()
        if command in ("/quit", "/exit"):
            return 0
        if command in ("/reset", "/base", "/tuned"):
            history = []
            base = {"/base": True, "/tuned": False}.get(command, base)
            print(f"(new conversation with the {who()} model)", file=err)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply = stream_reply(session, messages, sampling, base, out)
        history.append({"role": "assistant", "content": reply.text})
        if not reply.stopped:
            print(f"[hit --max-new-tokens {sampling.max_new_tokens} before the model ended its reply]", file=err)
