"""Legacy completions through the official openai SDK against the real server."""

from __future__ import annotations

import pytest

from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.e2e

PROMPT = "def fibonacci(n):\n    "


def test_text_prompt(client) -> None:
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=7, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens > 1


def test_prompt_list_times_n(client) -> None:
    r = client.completions.create(
        model=MODEL_NAME, prompt=["import os\n", "class Foo:"], n=2, max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 16


def test_token_id_prompt_matches_text_prompt(client, server) -> None:
    import httpx

    ids = httpx.post(server.url("/tokenize"), headers=server.headers(), json={"prompt": PROMPT}).json()["tokens"]
    kw = dict(model=MODEL_NAME, max_tokens=8, temperature=0)
    by_text = client.completions.create(prompt=PROMPT, **kw)
    by_ids = client.completions.create(prompt=ids, **kw)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.usage == by_ids.usage


def test_echo_and_logprobs(client) -> None:
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=3, echo=True, logprobs=2,
                                  extra_body={"ignore_eos": True})  # fmt: skip
    choice = r.choices[0]
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    # The prompt's tokens (the first has no logprob) followed by the three generated ones.
    assert len(lp.tokens) == r.usage.prompt_tokens + 3
    assert lp.token_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert all(len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)


def test_stream_echo_logprobs_n2_align(client) -> None:
    """Every choice echoes the prompt with its tokens' logprobs; the tokens
    spell the text and the offsets point into it."""
    stream = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=4, n=2, echo=True, logprobs=1, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    text: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    offsets: dict[int, list[int]] = {}
    for chunk in stream:
        for ch in chunk.choices:
            text[ch.index] = text.get(ch.index, "") + ch.text
            if ch.logprobs:
                tokens.setdefault(ch.index, []).extend(ch.logprobs.tokens)
                offsets.setdefault(ch.index, []).extend(ch.logprobs.text_offset)
    assert sorted(text) == [0, 1]
    for i in (0, 1):
        assert text[i].startswith(PROMPT)
        assert len(tokens[i]) > 4  # prompt tokens + 4 generated
        assert offsets[i] == sorted(offsets[i])
        if "\ufffd" not in text[i]:
            assert "".join(tokens[i]) == text[i]


def test_stream_with_usage(client) -> None:
    stream = client.completions.create(
        model=MODEL_NAME,
        prompt=PROMPT,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert text


def test_stream_greedy_equals_non_stream(client) -> None:
    kw = dict(model=MODEL_NAME, prompt=["import sys\n", PROMPT], max_tokens=10, temperature=0)
    plain = client.completions.create(**kw)
    stream = client.completions.create(stream=True, **kw)
    texts: dict[int, str] = {}
    for c in stream:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
    assert texts == {c.index: c.text for c in plain.choices}
