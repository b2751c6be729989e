"""Lemur's chat format: ChatML turns, special tokens and the built-in template.

Lemur-chat was trained on ChatML (`<|im_start|>{role}\n{content}<|im_end|>\n`)
but its published files carry no chat_template and its eos is `</s>`, not
`<|im_end|>`. A server that only stops at eos lets every answer run on to
max_tokens, so the gateway adds `<|im_end|>` to the stop tokens itself.
"""

from __future__ import annotations

import json

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
PAD = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IM_SEP = "<|im_sep|>"
DIFF_MARKER = "<|diff_marker|>"

# Added after the base vocabulary, in this order (ids 32000-32004 in lemur-70b-chat).
LEMUR_ADDED_TOKENS: tuple[str, ...] = (PAD, IM_START, IM_END, IM_SEP, DIFF_MARKER)

CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

# Lemur's tool format (Lemur-chat has no native one; this is ours, in ChatML):
# - the tools are listed in the system turn, after the system prompt: a short
#   preamble, then one compact JSON object per function inside <tools>;
# - a call is `<tool_call>{"name":...,"arguments":{...}}</tool_call>` in the
#   assistant turn (compact JSON, as the grammar makes the model write it);
#   several calls follow each other directly;
# - a tool result is its own `tool` turn: a JSON header line with the call id
#   and the function's name, then the result.
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOLS_PREAMBLE = (
    '# Tools\nTo call a function, reply <tool_call>{"name":"<name>","arguments":{...}}</tool_call>.\n<tools>\n'
)
TOOLS_END = "</tools>"


def compact_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# The same text in Python (training builds its examples with these; a test
# holds them equal to the template's rendering).
def tools_text(functions: list[dict]) -> str:
    """The tools block of the system turn, for OpenAI `function` objects."""
    return TOOLS_PREAMBLE + "".join(compact_json(f) + "\n" for f in functions) + TOOLS_END


def tool_call_prefix(name: str) -> str:
    """A call up to its arguments (where the grammar's tag for `name` begins)."""
    return TOOL_CALL_OPEN + '{"name":' + json.dumps(name, ensure_ascii=False) + ',"arguments":'


def tool_call_text(name: str, arguments: dict) -> str:
    return tool_call_prefix(name) + compact_json(arguments) + "}" + TOOL_CALL_CLOSE


def tool_result_header(call_id: str, name: str | None) -> str:
    return compact_json({"tool_call_id": call_id, "name": name}) + "\n"


def _jinja_text(text: str) -> str:
    """`text` as a Jinja expression that prints it (no block tag ever touches a newline)."""
    return "{{ " + repr(text) + " }}"


# The prompt for a reply ends with the assistant header; no default system
# prompt is injected (none was in training). Every piece of JSON goes through
# `tojson`, which the gateway's environment makes unable to spell a control
# token (chat_template.py); message contents are located and kept as data.
# `training/sft_data.py` builds the same text in Python; a test holds them equal.
LEMUR_CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{% set tools_text %}" + _jinja_text(TOOLS_PREAMBLE) + "{% for tool in tools %}"
    "{{ tool['function'] | tojson(separators=(',', ':')) + '\\n' }}"
    "{% endfor %}" + _jinja_text(TOOLS_END) + "{% endset %}"
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n' + tools_text + '<|im_end|>\\n' }}{% endif %}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'tool' %}"
    "{% set name = message['name'] if message['name'] is defined else none %}"
    "{{ {'tool_call_id': message['tool_call_id'], 'name': name} | tojson(separators=(',', ':')) }}"
    "{{ '\\n' }}"
    "{% endif %}"
    "{{ message['content'] }}"
    "{% if loop.first and tools and message['role'] == 'system' %}"
    "{{ ('\\n\\n' if message['content'] else '') + tools_text }}"
    "{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    + _jinja_text(TOOL_CALL_OPEN + '{"name":')
    + "{{ call['function']['name'] | tojson }}"
    + _jinja_text(',"arguments":')
    + "{{ call['function']['arguments'] | tojson(separators=(',', ':')) }}"
    + _jinja_text("}" + TOOL_CALL_CLOSE)
    + "{% endfor %}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Built-in templates of earlier releases, as exported into checkpoints'
# tokenizer configs: a checkpoint that carries one gets the current template.
LEGACY_LEMUR_TEMPLATES: tuple[str, ...] = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
)
