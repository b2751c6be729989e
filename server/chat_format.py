"""Lemur's chat format: ChatML turns, special tokens and the built-in template.

Lemur-chat was trained on ChatML (`<|im_start|>{role}\n{content}<|im_end|>\n`)
but its published files carry no chat_template and its eos is `</s>`, not
`<|im_end|>`. A server that only stops at eos lets every answer run on to
max_tokens, so the gateway adds `<|im_end|>` to the stop tokens itself.
"""

from __future__ import annotations

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

CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")

# The prompt for a reply ends with the assistant header; no default system
# prompt is injected (none was in training).
LEMUR_CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
