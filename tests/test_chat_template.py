"""Template selection and rendering (pure logic)."""

from __future__ import annotations

import pytest

from server.chat_format import LEMUR_CHATML_TEMPLATE
from server.chat_template import ChatTemplate, select_template
from server.errors import InvalidRequest

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_builtin_chatml_matches_lemur_training_format() -> None:
    t = ChatTemplate.build(LEMUR_CHATML_TEMPLATE, "builtin", "<s>", "</s>")
    assert t.render(MSGS) == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.render(MSGS, add_generation_prompt=False).endswith("Hi<|im_end|>\n")


def test_precedence_override_then_checkpoint_then_builtin(tmp_path) -> None:
    assert select_template(None, None) == (LEMUR_CHATML_TEMPLATE, "lemur-chatml (built in)")
    assert select_template(None, "{{ 'ckpt' }}") == ("{{ 'ckpt' }}", "checkpoint")
    f = tmp_path / "t.jinja"
    f.write_text("{{ 'file' }}")
    assert select_template(str(f), "{{ 'ckpt' }}") == ("{{ 'file' }}", "--chat-template")
    assert select_template("{{ 'inline' }}", "{{ 'ckpt' }}") == ("{{ 'inline' }}", "--chat-template")


def test_template_errors_are_client_errors() -> None:
    t = ChatTemplate.build("{{ raise_exception('only user turns') }}", "x", "", "")
    with pytest.raises(InvalidRequest, match="only user turns"):
        t.render(MSGS)
