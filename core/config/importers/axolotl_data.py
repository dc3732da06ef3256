"""axolotl's dataset entries (`datasets:` items, `chat_template`) onto our data section."""

from __future__ import annotations

from typing import Any

from qlora_studio.core.config.importers.common import Draft, Keys

_AXOLOTL_TEMPLATES: dict[str, tuple[str, str]] = {
    "tokenizer_default": ("auto", ""),
    "tokenizer_default_fallback_chatml": ("auto", "auto falls back to chatml too"),
    "chatml": ("chatml", ""), "llama3": ("llama3", ""), "gemma": ("gemma", ""), "alpaca": ("alpaca", ""),
    "phi_3": ("phi3", ""), "mistral_v1": ("mistral", ""),
    "mistral_v2v3": ("mistral", "approximated: ours writes spaces inside [INST] ... [/INST] (v1 style)"),
}


def axolotl_template(imp: Draft, source: str, value: Any) -> None:
    name = str(value).strip()
    if name in _AXOLOTL_TEMPLATES:
        ours, note = _AXOLOTL_TEMPLATES[name]
        imp.carry(source, "data.chat_template", ours, note)
    elif name.startswith("tokenizer_default_fallback_"):
        imp.carry(source, "data.chat_template", "auto", "auto uses the tokenizer's template and falls back to chatml, not "
                  + name.removeprefix("tokenizer_default_fallback_"))
    else:
        imp.drop(source, value, f"no QLoRA Studio template '{name}'; data.chat_template stays auto (the tokenizer's own)")


_AXOLOTL_TYPES: dict[str, tuple[str, str | None]] = {
    # axolotl type -> (our format, our named template for its prompt style or None)
    "alpaca": ("alpaca", "alpaca"), "alpaca_chat": ("alpaca", None), "alpaca_w_system": ("alpaca", "alpaca"),
    "gpteacher": ("alpaca", "alpaca"), "chat_template": ("messages", None), "sharegpt": ("sharegpt", None),
    "completion": ("text", None), "pretrain": ("text", None),
}
_ALPACA_STYLES = {"instruct": "alpaca", "chatml": "chatml", "phi": "phi3"}


def axolotl_dataset(entry: Any, imp: Draft, name: str, target: str) -> None:
    if isinstance(entry, str):
        imp.carry(name, target, entry)
        return
    if not isinstance(entry, dict):
        imp.drop(name, entry, "not a dataset entry")
        return
    keys = Keys(entry, imp, f"{name}.")
    path = keys.take("path")
    files = keys.take("data_files")
    if files is not None:
        files_list = files if isinstance(files, list) else [files]
        if len(files_list) == 1:
            imp.carry(keys.name("data_files"), target, str(files_list[0]), "the file itself; path names its loader")
            if path is not None:
                imp.drop(keys.name("path"), path, "data_files gives the file")
        else:
            imp.drop(keys.name("data_files"), files, "several files: put them in one folder and set data.path to it")
            if path is not None:
                imp.carry(keys.name("path"), target, str(path))
    elif path is not None:
        imp.carry(keys.name("path"), target, str(path))
    else:
        imp.drop(name, entry, "no path")
    for key, dotted in (("name", "data.subset"), ("split", "data.split")):
        value = keys.take(key)
        if value is not None:
            imp.carry(keys.name(key), dotted, str(value))

    kind = keys.take("type")
    columns: dict[str, str] = {}
    if isinstance(kind, dict):  # user-defined prompt format: field_* name the alpaca columns
        sub = Keys(kind, imp, keys.name("type."))
        for field_key, ours in (("field_instruction", "instruction"), ("field_input", "input"),
                                ("field_output", "output"), ("field_system", "system")):
            value = sub.take(field_key)
            if value is not None:
                columns[ours] = str(value)
                imp.carried.append(f"{sub.name(field_key)} -> data.columns.{ours} = {value}")
        prompt = sub.take("system_prompt")
        if prompt is not None:
            imp.carry(sub.name("system_prompt"), "data.system_prompt", str(prompt))
        sub.drop_rest({}, "custom prompt strings are not imported: the row becomes user/assistant messages rendered "
                          "with data.chat_template")
        imp.carry(keys.name("type"), "data.format", "alpaca", "user-defined instruction/input/output fields")
    elif kind is not None:
        base, _, style = str(kind).partition(":")
        mapped = _AXOLOTL_TYPES.get(base)
        if mapped is None:
            imp.drop(keys.name("type"), kind, "no QLoRA Studio format for this axolotl type; data.format stays auto")
        else:
            fmt, template = mapped
            if style:
                template = _ALPACA_STYLES.get(style)
            imp.carry(keys.name("type"), "data.format", fmt)
            if template:
                imp.carry(keys.name("type"), "data.chat_template", template,
                          f"axolotl renders type {kind} with the {template} prompt style")
    conversation = keys.take("conversation")  # legacy sharegpt: the fastchat template name
    if conversation is not None:
        axolotl_template(imp, keys.name("conversation"), conversation)
    chat = keys.take("chat_template")
    if chat is not None:
        axolotl_template(imp, keys.name("chat_template"), chat)

    messages = keys.take("field_messages")
    if messages is not None and str(messages) != "messages":
        columns["messages"] = str(messages)
        imp.carried.append(f"{keys.name('field_messages')} -> data.columns.messages = {messages}")
    elif messages is not None:
        imp.carried.append(f"{keys.name('field_messages')} -> data.columns (messages is the default)")
    mapping = dict(keys.take("message_property_mappings") or {})
    legacy_keys = [k for k in ("message_field_role", "message_field_content") if entry.get(k) is not None]
    for legacy, prop in (("message_field_role", "role"), ("message_field_content", "content")):
        value = keys.take(legacy)
        if value is not None:
            mapping.setdefault(prop, str(value))
    label = keys.name("message_property_mappings" if "message_property_mappings" in entry or not legacy_keys
                      else "/".join(legacy_keys))
    role, content = str(mapping.pop("role", "role")), str(mapping.pop("content", "content"))
    if (role, content) == ("from", "value"):
        imp.carry(label, "data.format", "sharegpt", "turns are {from, value}")
    elif (role, content) != ("role", "content"):
        imp.drop(label, {"role": role, "content": content},
                 "QLoRA Studio reads turns as {role, content} or {from, value}; rename the keys in the data")
    elif "message_property_mappings" in entry or legacy_keys:
        imp.carried.append(f"{label} -> data.format (role/content: the default)")
    for prop, value in mapping.items():
        imp.drop(f"{keys.name('message_property_mappings')}.{prop}", value, "only role and content are read from a turn")
    text_field = keys.take("field")
    if text_field is not None:
        columns["text"] = str(text_field)
        imp.carried.append(f"{keys.name('field')} -> data.columns.text = {text_field}")
    trained = keys.take("roles_to_train")
    if trained is not None:
        roles = {str(r) for r in (trained if isinstance(trained, list) else [trained])}
        if roles <= {"assistant", "gpt", "model"}:
            imp.carry(keys.name("roles_to_train"), "data.train_on", "assistant")
        elif {"user", "human"} & roles:
            imp.carry(keys.name("roles_to_train"), "data.train_on", "all", "every role carries loss")
        else:
            imp.drop(keys.name("roles_to_train"), trained, "train_on is assistant or all")
    if columns:
        imp.put("data.columns", columns)
    keys.drop_rest({
        "ds_type": "the file type is read from the file name",
        "roles": "role names are fixed: user/human, assistant/gpt/model, system",
        "train_on_eos": "every assistant turn ends in a trained stop token",
        "train_on_eot": "every assistant turn ends in a trained stop token",
        "drop_system_message": "system messages are kept",
        "shards": "the whole dataset is used", "shards_idx": "the whole dataset is used",
        "trust_remote_code": "datasets loading scripts are not run",
        "revision": "the dataset's default revision is read",
        "field_tools": "tool calls are not supported", "field_thinking": "reasoning fields are not split out",
    }, "no QLoRA Studio equivalent")

