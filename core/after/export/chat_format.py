"""A Jinja chat template measured and rebuilt as an Ollama (Go text/template) TEMPLATE.

Ollama does not run Jinja. A Modelfile's TEMPLATE is a Go text/template that Ollama renders
with `.Messages` (every message, system ones included, consecutive same-role ones joined) and
`.System` (the system messages joined); the Modelfile's SYSTEM is put in front as a system
message when the conversation does not start with one. llama.cpp adds BOS itself when the GGUF
says add_bos_token, so the template must not write it.

No library translates Jinja to Go templates, and a table of known templates breaks on small
variations (Mistral's spacing differs between releases), so the chat format is measured: the
Jinja template is rendered with marker messages, the output is cut into the text before and
after each role's content, and a Go template is built from those pieces. Then both are rendered
for several conversations (Ollama's rules emulated for the Go side) and must agree exactly, or
the export is refused. Three ways of placing the system prompt are recognised: its own turn
(ChatML, Llama-3), inside the first user turn (Llama-2, Mistral/Gemma-style templates) and
inside the last user turn (Mistral v0.3).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from qlora_studio.core.after.export import ExportError
from qlora_studio.core.model.sources import first_line

log = logging.getLogger(__name__)

_PROBE = {"system": "SYSTEM-PROBE-7", "u1": "USER-PROBE-1", "a1": "ASSISTANT-PROBE-1", "u2": "USER-PROBE-2"}


@dataclass
class ChatFormat:
    """A chat template cut into pieces: each role's text before/after its content."""

    family: str                    # chatml | llama3 | llama2 | mistral | generic (for messages only)
    system_mode: str               # turn | first_user | last_user | none
    prefix: dict[str, str]         # role -> text before the content
    suffix: dict[str, str]         # role -> text after it
    generation: str                # appended to ask for the assistant's reply
    system_pre: str = ""           # first_user/last_user: text around the system prompt inside the user turn
    system_post: str = ""
    default_system: str | None = None
    system_always: bool = False    # turn: the system turn is written even without system text
    stops: list[str] = field(default_factory=list)

    # The Go template. Literal text is written raw (real newlines) with no whitespace-trimming
    # markers anywhere, so no newline that belongs to the format can be eaten by `{{-`.
    def go_template(self) -> str:
        p, s = self.prefix, self.suffix
        head = ""
        if self.system_mode == "turn" and self.system_always:
            head = f"{{{{ if not .System }}}}{_go(p['system'])}{_go(s['system'])}{{{{ end }}}}"
        generic_role = self._generic_role_parts()
        if self.system_mode == "turn" and generic_role is not None:
            a, b, end = generic_role
            return (f"{head}{{{{ range .Messages }}}}{_go(a)}{{{{ .Role }}}}{_go(b)}{{{{ .Content }}}}{_go(end)}"
                    f"{{{{ end }}}}{_go(self.generation)}")
        user = f"{_go(p['user'])}{{{{ .Content }}}}{_go(s['user'])}"
        assistant = f"{_go(p['assistant'])}{{{{ .Content }}}}{_go(s['assistant'])}"
        if self.system_mode == "turn":
            system = f"{_go(p['system'])}{{{{ .Content }}}}{_go(s['system'])}"
            body = (f'{{{{ if eq .Role "system" }}}}{system}{{{{ else if eq .Role "user" }}}}{user}'
                    f'{{{{ else if eq .Role "assistant" }}}}{assistant}{{{{ end }}}}')
            return f"{head}{{{{ range .Messages }}}}{body}{{{{ end }}}}{_go(self.generation)}"
        if self.system_mode == "first_user":
            inject = f'{{{{ if $system }}}}{_go(self.system_pre)}{{{{ $system }}}}{_go(self.system_post)}{{{{ $system = "" }}}}{{{{ end }}}}'
            user = f"{_go(p['user'])}{inject}{{{{ .Content }}}}{_go(s['user'])}"
            body = (f'{{{{ if eq .Role "system" }}}}{{{{ $system = .Content }}}}{{{{ else if eq .Role "user" }}}}{user}'
                    f'{{{{ else if eq .Role "assistant" }}}}{assistant}{{{{ end }}}}')
            return f'{{{{ $system := "" }}}}{{{{ range .Messages }}}}{body}{{{{ end }}}}{_go(self.generation)}'
        if self.system_mode == "last_user":
            inject = (f"{{{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}}}{_go(self.system_pre)}"
                      f"{{{{ $.System }}}}{_go(self.system_post)}{{{{ end }}}}")
            user = f"{_go(p['user'])}{inject}{{{{ .Content }}}}{_go(s['user'])}"
            body = f'{{{{ if eq .Role "user" }}}}{user}{{{{ else if eq .Role "assistant" }}}}{assistant}{{{{ end }}}}'
            return f"{{{{ range $i, $_ := .Messages }}}}{body}{{{{ end }}}}{_go(self.generation)}"
        body = f'{{{{ if eq .Role "user" }}}}{user}{{{{ else if eq .Role "assistant" }}}}{assistant}{{{{ end }}}}'
        return f"{{{{ range .Messages }}}}{body}{{{{ end }}}}{_go(self.generation)}"

    def _generic_role_parts(self) -> tuple[str, str, str] | None:
        """(a, b, end) when every role is written a + role + b + content + end (ChatML, Llama-3)."""
        head = self.prefix.get("system", "")
        if "system" not in head:
            return None
        a, b = head.rsplit("system", 1)
        if all(self.prefix[r] == a + r + b and self.suffix[r] == self.suffix["system"] for r in ("user", "assistant")):
            return a, b, self.suffix["system"]
        return None

    def render_like_ollama(self, messages: list[dict[str, str]], system: str | None) -> str:
        """What Ollama sends the model for `messages`, with the Modelfile's SYSTEM `system`."""
        messages = list(messages)
        if system and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": system})
        system_text = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        out, pending = [], None
        if self.system_mode == "turn" and self.system_always and not system_text:
            out += [self.prefix["system"], self.suffix["system"]]
        for i, m in enumerate(messages):
            role, content = m["role"], m["content"]
            if role == "system":
                if self.system_mode == "turn":
                    out += [self.prefix["system"], content, self.suffix["system"]]
                elif self.system_mode == "first_user":
                    pending = content
                continue
            if role == "user":
                out.append(self.prefix["user"])
                if self.system_mode == "first_user" and pending:
                    out += [self.system_pre, pending, self.system_post]
                    pending = None
                if self.system_mode == "last_user" and system_text and i == len(messages) - 1:
                    out += [self.system_pre, system_text, self.system_post]
                out += [content, self.suffix["user"]]
            elif role == "assistant":
                out += [self.prefix["assistant"], content, self.suffix["assistant"]]
        return "".join(out) + self.generation


def _go(text: str) -> str:
    """Literal text for a Go template inside a Modelfile's triple quotes."""
    if "{{" in text or "}}" in text or '"""' in text:
        return "{{ " + json.dumps(text) + " }}"  # a Go string constant (JSON escapes are valid Go)
    return text


def analyze_chat_template(template: str, bos_token: str | None = None, eos_token: str | None = None,
                          special_tokens: list[str] | tuple[str, ...] = ()) -> ChatFormat:
    """Cut a Jinja chat template into a `ChatFormat`, or raise ExportError if it does not fit one.

    The result is verified: Ollama's rendering of the Go template equals the Jinja rendering
    (less a leading BOS) for conversations with and without a system prompt, one and several
    turns, and multi-line messages.
    """
    P = _PROBE
    if "strftime_now" in template:
        log.warning("the chat template writes today's date; the Ollama template keeps the date of the export")

    def render(messages, generation=False):
        text = _render_jinja(template, messages, generation, bos_token, eos_token)
        if bos_token and text.startswith(bos_token):
            text = text[len(bos_token):]  # llama.cpp adds BOS itself (add_bos_token)
        return text

    def msgs(*pairs):
        return [{"role": r, "content": c} for r, c in pairs]

    three = msgs(("user", P["u1"]), ("assistant", P["a1"]), ("user", P["u2"]))
    try:
        plain = render(three)
        with_generation = render(three, True)
        single = render(msgs(("user", P["u1"])))
    except Exception as exc:  # noqa: BLE001 (a template may raise_exception() on anything)
        raise ExportError(f"cannot translate the chat template for Ollama: it fails to render ({first_line(exc)})") from None
    if not with_generation.startswith(plain):
        raise ExportError("cannot translate the chat template for Ollama: the reply prompt is not added at the end")
    generation = with_generation[len(plain):]
    pieces = _cut(plain, [P["u1"], P["a1"], P["u2"]])
    if pieces is None:
        raise ExportError("cannot translate the chat template for Ollama: it does not copy messages through verbatim")
    first, between_user_assistant, between_assistant_user, user_suffix = pieces
    if not between_user_assistant.startswith(user_suffix):
        raise ExportError("cannot translate the chat template for Ollama: user turns end differently")
    assistant_prefix = between_user_assistant[len(user_suffix):]

    try:
        with_system = render(msgs(("system", P["system"]), *[(m["role"], m["content"]) for m in three]))
    except Exception:  # noqa: BLE001
        with_system = None  # templates that reject a system message
    candidates = []
    if with_system and P["system"] in with_system:
        before, after = with_system.split(P["system"], 1)
        tail = P["u1"] + between_user_assistant + P["a1"] + between_assistant_user + P["u2"] + user_suffix
        if after.endswith(tail):
            between = after[: len(after) - len(tail)]
            candidates += _turn_candidates(before, between, first, between_assistant_user, user_suffix,
                                           assistant_prefix, generation)
            if before.startswith(first):  # inside the first user turn, after its prefix
                candidates.append(ChatFormat("", "first_user", _roles(first, first, assistant_prefix),
                                             _roles(user_suffix, user_suffix, ""), generation,
                                             system_pre=before[len(first):], system_post=between))
        head = first + P["u1"] + between_user_assistant + P["a1"] + between_assistant_user
        tail = P["u2"] + user_suffix
        if before.startswith(head) and after.endswith(tail):  # inside the last user turn
            candidates.append(ChatFormat("", "last_user", _roles(first, first, assistant_prefix),
                                         _roles(user_suffix, user_suffix, ""), generation,
                                         system_pre=before[len(head):], system_post=after[: len(after) - len(tail)]))
    candidates.append(ChatFormat("", "none", _roles(first, first, assistant_prefix), _roles(user_suffix, user_suffix, ""),
                                 generation))

    for fmt in candidates:
        if fmt.system_mode != "turn":
            fmt.prefix["user"] = first
            if not between_assistant_user.endswith(first):
                continue
            fmt.suffix["assistant"] = between_assistant_user[: len(between_assistant_user) - len(first)]
        fmt.family = _family_name(template)
        if fmt.default_system is None and single + generation != fmt.render_like_ollama(msgs(("user", P["u1"])), None):
            continue  # a turn-less format must render a lone user message exactly
        if _verified(fmt, render, with_system is not None):
            fmt.stops = _stop_strings(fmt, eos_token, special_tokens)
            return fmt
    raise ExportError("cannot translate this chat template to Ollama's format (no known layout reproduces it exactly)")


def _roles(system: str, user: str, assistant: str) -> dict[str, str]:
    return {"system": system, "user": user, "assistant": assistant}


def _turn_candidates(before, between, first, between_assistant_user, user_suffix, assistant_prefix, generation):
    """System as its own turn. Where one turn ends and the next begins is not visible in the
    output (ChatML's "<|im_end|>\\n" + "<|im_start|>user\\n"), so the split is taken where the
    role name sits: the system turn's prefix with "user" in place of "system" must start the
    user turn (ChatML, Llama-3, Phi-3, Zephyr all name roles this way). When fixed text follows
    the role header (Llama-3.1's "Cutting Knowledge Date" lines) the shorter cuts of that text
    are tried too; verification keeps the first candidate that reproduces the template."""
    options = []
    if "system" in before:
        a, b = before.rsplit("system", 1)
        options += [a + "user" + b[:k] for k in range(len(b), -1, -1)]
    # No role name to split on (Alpaca writes the system text bare): with no default system
    # prompt the first user turn starts the output, which gives the split.
    options.append(first)
    found = []
    for user_prefix in dict.fromkeys(options):
        if not (user_prefix and between.endswith(user_prefix) and between_assistant_user.endswith(user_prefix)
                and first.endswith(user_prefix)):
            continue
        system_suffix = between[: len(between) - len(user_prefix)]
        fmt = ChatFormat("", "turn", _roles(before, user_prefix, assistant_prefix),
                         _roles(system_suffix, user_suffix, between_assistant_user[: len(between_assistant_user) - len(user_prefix)]),
                         generation)
        default_block = first[: len(first) - len(user_prefix)]
        if default_block:  # the template adds a system turn of its own when there is none
            if not (default_block.startswith(before) and default_block.endswith(system_suffix)
                    and len(default_block) >= len(before) + len(system_suffix)):
                continue
            fmt.default_system = default_block[len(before): len(default_block) - len(system_suffix)]
            # SmolLM2 / Qwen2.5 insert a default prompt (-> the Modelfile's SYSTEM); Llama-3.1
            # writes its system header even when empty (-> emitted when there is no system text).
            fmt.system_always = fmt.default_system == ""
        found.append(fmt)
    return found


def _cut(text: str, markers: list[str]) -> list[str] | None:
    """text = pieces[0] + markers[0] + pieces[1] + ... + markers[-1] + pieces[-1], each marker once."""
    pieces, rest = [], text
    for marker in markers:
        if rest.count(marker) != 1:
            return None
        head, rest = rest.split(marker, 1)
        pieces.append(head)
    return pieces + [rest]


def _verified(fmt: ChatFormat, render, has_system: bool) -> bool:
    conversations = [
        [("user", "Hi")],
        [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me\na joke.")],
        [("user", "one"), ("assistant", "two"), ("user", "three"), ("assistant", "four"), ("user", "five")],
    ]
    if has_system:
        conversations += [[("system", "Be brief.\nAnswer in English.")] + c for c in conversations]
    for conv in conversations:
        messages = [{"role": r, "content": c} for r, c in conv]
        try:
            expected = render(messages, True)
        except Exception:  # noqa: BLE001 (any template error: not this layout)
            return False
        if fmt.render_like_ollama(messages, fmt.default_system) != expected:
            return False
    return True


def _family_name(template: str) -> str:
    for marker, name in (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"), ("<<SYS>>", "llama2"),
                         ("[INST]", "mistral")):
        if marker in template:
            return name
    return "generic"


def _stop_strings(fmt: ChatFormat, eos_token: str | None, special_tokens) -> list[str]:
    """Where generation must stop: special tokens that end a reply or start the next turn, EOS,
    and, for formats whose turn markers are plain text ("[INST]"), the user turn's marker."""
    specials = sorted(set(special_tokens) | ({eos_token} if eos_token else set()), key=len, reverse=True)
    stops: list[str] = []
    for text in (fmt.suffix["assistant"], fmt.prefix["user"], fmt.prefix["assistant"]):
        found = sorted((text.find(s), s) for s in specials if s and s in text)
        stops += [s for _, s in found]
    if not any(s in fmt.prefix["user"] for s in specials) and fmt.prefix["user"].strip():
        stops.append(fmt.prefix["user"].strip())
    if eos_token:
        stops.append(eos_token)
    return list(dict.fromkeys(stops))


def _render_jinja(template: str, messages, generation: bool, bos_token, eos_token) -> str:
    """Render as `tokenizer.apply_chat_template(..., tokenize=False)` does (same Jinja settings)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered = render_jinja_template([messages], chat_template=template, add_generation_prompt=generation,
                                     bos_token=bos_token or "", eos_token=eos_token or "")
    return rendered[0][0] if isinstance(rendered, tuple) else rendered[0]


