"""LoRA adapters end to end: trained by our recipe (and made by hand with
peft), served by the real vLLM engine behind the real gateway, called with
the official openai SDK.

One server, fp32 (so that transformers can be the reference), with two
adapters from the command line and runtime loading on."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from lemur.training.config import load_config
from lemur.training.distributed import Dist
from lemur.training.sft_style import STYLE_PREFIX
from tests.conftest import API_KEY, LiveServer, start_server, stop_server
from tests.support.lora import forge_weights, make_adapter, tiny_llama_config
from tests.support.picker import LORA_INFO, missing

pytestmark = pytest.mark.e2e

ADMIN_KEY = "lemur-admin-test-key"
SINGLE = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
QUESTIONS = [
    "Which module defines `Path`?",
    "How do I import `deque` from `collections`?",
    "What does the function `dumps` in the `json` module do?",
    "Explain `os.path.join` briefly.",
    "Show me the signature of `re.compile`.",
    "Which module defines `Counter`?",
    "How do I import `sleep` from `time`?",
    "Explain `shutil.copyfile` briefly.",
    "What does the class `Thread` in the `threading` module do?",
    "Which module defines `dataclass`?",
]


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """house-style: the tiny house-style preset trained by our trainer on the
    test checkpoint (shortened); handmade: peft's own, with random weights."""
    from lemur.training.recipe import run_sft

    root = tmp_path_factory.mktemp("lora")
    overrides = [
        "sft.max_steps=60",
        "data.sft_demo_conversations=600",
        "data.sft_heldout=20",
        "sft.eval_every=60",
        "sft.save_every=60",
        "sft.lr=1e-2",
    ]
    summary = run_sft(load_config("tiny-house-style", overrides), root / "run", SINGLE, init=tiny_checkpoint)
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    house = shutil.copytree(root / "run" / "sft" / "final", root / "house-style")
    return {
        "house-style": house,
        "handmade": make_adapter(tiny_checkpoint, root / "handmade", seed=1),
        "handmade-2": make_adapter(tiny_checkpoint, root / "handmade-2", seed=2),
        "rank16": make_adapter(tiny_checkpoint, root / "rank16", rank=16),
        "other-base": make_adapter(None, root / "other-base", config=tiny_llama_config(hidden=64)),
    }


@pytest.fixture(scope="module")
def lora_server(tiny_checkpoint: Path, adapters, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("lora-server") / "server.log"
    modules = [f"{name}={adapters[name]}" for name in ("house-style", "handmade")]
    extra = [
        "--api-key",
        API_KEY,
        "--dtype",
        "float32",
        "--max-lora-rank",
        "8",
        "--lora-admin-key",
        ADMIN_KEY,
        "--lora-modules",
        *modules,
    ]
    live = start_server(tiny_checkpoint, log, extra)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def lora_client(lora_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=lora_server.url("/v1"), api_key=API_KEY, max_retries=0, timeout=120)


def ask(client: openai.OpenAI, model: str, question: str, max_tokens: int = 16) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens
    )
    return reply.choices[0].message.content or ""


def test_models_lists_the_base_and_each_adapter_with_its_parent(lora_client: openai.OpenAI) -> None:
    cards = {m.id: m for m in lora_client.models.list().data}
    base = "lemur-tiny-chat-untrained"
    assert set(cards) == {base, "house-style", "handmade"}
    assert cards["house-style"].parent == base and cards["handmade"].parent == base  # type: ignore[attr-defined]
    assert lora_client.models.retrieve("house-style").id == "house-style"


def _reference_replies(tiny_checkpoint: Path, adapter: Path, prompts: list[list[int]], max_tokens: int) -> list[str]:
    """Greedy replies of transformers on the base with the adapter merged in (fp32)."""
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    base = LlamaForCausalLM.from_pretrained(tiny_checkpoint, torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    replies = []
    for ids in prompts:
        with torch.no_grad():
            out = merged.generate(
                torch.tensor([ids]),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
        new = [t for t in out[0, len(ids) :].tolist() if t not in stops]
        replies.append(tok.decode(new, skip_special_tokens=True))
    return replies


def test_trained_adapter_equals_transformers_peft_on_merged_weights(
    lora_server: LiveServer, lora_client: openai.OpenAI, tiny_checkpoint: Path, adapters
) -> None:
    prompts = []
    for q in QUESTIONS:
        body = {"model": "house-style", "messages": [{"role": "user", "content": q}], "add_generation_prompt": True}
        r = httpx.post(lora_server.url("/tokenize"), json=body, headers=lora_server.headers(), timeout=30)
        assert r.status_code == 200, r.text
        prompts.append(r.json()["tokens"])
    served = [ask(lora_client, "house-style", q, max_tokens=20) for q in QUESTIONS]
    assert served == _reference_replies(tiny_checkpoint, adapters["house-style"], prompts, 20)
    # The adapter learned the house style; the base never writes it.
    assert sum(s.startswith(STYLE_PREFIX.strip()) for s in served) >= 8, served
    assert not any(ask(lora_client, "lemur-tiny-chat-untrained", q).startswith(STYLE_PREFIX.strip()) for q in QUESTIONS)


def test_two_adapters_and_the_base_answer_differently(lora_client: openai.OpenAI) -> None:
    q = QUESTIONS[0]
    replies = {m: ask(lora_client, m, q) for m in ("lemur-tiny-chat-untrained", "house-style", "handmade")}
    assert len(set(replies.values())) == 3, replies


def test_base_requests_stay_identical_amid_adapter_traffic(lora_server: LiveServer) -> None:
    models = ["lemur-tiny-chat-untrained", "house-style", "handmade"]
    sync = openai.OpenAI(base_url=lora_server.url("/v1"), api_key=API_KEY, max_retries=0, timeout=120)
    alone = {(m, q): ask(sync, m, q) for m in models for q in QUESTIONS[:6]}

    async def together() -> dict[tuple[str, str], str]:
        client = openai.AsyncOpenAI(base_url=lora_server.url("/v1"), api_key=API_KEY, max_retries=0, timeout=120)

        async def one(m: str, q: str) -> str:
            reply = await client.chat.completions.create(
                model=m, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=16
            )
            return reply.choices[0].message.content or ""

        keys = [(m, q) for q in QUESTIONS[:6] for m in models]  # base and adapters interleaved
        results = await asyncio.gather(*(one(m, q) for m, q in keys))
        await client.close()
        return dict(zip(keys, results, strict=True))

    mixed = asyncio.run(together())
    base = models[0]
    assert {k: v for k, v in mixed.items() if k[0] == base} == {k: v for k, v in alone.items() if k[0] == base}
    assert mixed == alone  # and each adapter's replies too


def _admin(server: LiveServer, path: str, body: dict, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url(path), json=body, headers=headers, timeout=60)


def test_runtime_load_and_unload_need_the_admin_key(lora_server: LiveServer, lora_client, adapters) -> None:
    body = {"lora_name": "handmade-2", "lora_path": str(adapters["handmade-2"])}
    for key in (None, API_KEY, "wrong"):
        refused = _admin(lora_server, "/v1/load_lora_adapter", body, key)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", refused.text
    loaded = _admin(lora_server, "/v1/load_lora_adapter", body)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["name"] == "handmade-2" and loaded.json()["rank"] == 4
    assert "handmade-2" in {m.id for m in lora_client.models.list().data}
    assert ask(lora_client, "handmade-2", QUESTIONS[1]) != ask(lora_client, "handmade", QUESTIONS[1])
    assert _admin(lora_server, "/v1/unload_lora_adapter", {"lora_name": "handmade-2"}, API_KEY).status_code == 401
    assert _admin(lora_server, "/v1/unload_lora_adapter", {"lora_name": "handmade-2"}).status_code == 200
    with pytest.raises(openai.NotFoundError) as err:
        ask(lora_client, "handmade-2", QUESTIONS[1])
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]
    again = _admin(lora_server, "/v1/unload_lora_adapter", {"lora_name": "handmade-2"})
    assert again.status_code == 404 and again.json()["error"]["code"] == "model_not_found"


def test_bad_adapters_get_clear_4xx_and_the_others_keep_serving(
    lora_server: LiveServer, lora_client: openai.OpenAI, adapters, tmp_path: Path
) -> None:
    corrupt = shutil.copytree(adapters["handmade"], tmp_path / "corrupt")
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    cases = {
        "rank16": ("rank 16 exceeds this server's --max-lora-rank 8", str(adapters["rank16"])),
        "other-base": ("made for a different base model", str(adapters["other-base"])),
        "missing": ("does not exist", str(tmp_path / "missing")),
        "corrupt": ("corrupt or truncated", str(corrupt)),
        "handmade": ("already served", str(adapters["handmade-2"])),
    }
    for name, (message, path) in cases.items():
        r = _admin(lora_server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        assert r.status_code == 400, (name, r.text)
        assert message in r.json()["error"]["message"] and r.json()["error"]["param"] in ("lora_path", "lora_name")
    with pytest.raises(openai.NotFoundError) as err:
        ask(lora_client, "no-such-adapter", QUESTIONS[0])
    assert err.value.status_code == 404 and err.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert {m.id for m in lora_client.models.list().data} == {"lemur-tiny-chat-untrained", "house-style", "handmade"}
    assert ask(lora_client, "house-style", QUESTIONS[0]).startswith(STYLE_PREFIX.strip())


def test_adapter_requests_are_labelled_in_metrics_and_logs(lora_server: LiveServer, lora_client) -> None:
    ask(lora_client, "handmade", QUESTIONS[2])
    text = httpx.get(lora_server.url("/metrics"), timeout=10).text
    for model in ("handmade", "house-style", "lemur-tiny-chat-untrained"):
        assert f'lemur:generation_tokens_total{{model_name="{model}"}}' in text, model
        assert f'lemur:e2e_request_latency_seconds_count{{model_name="{model}"}}' in text, model
    assert "lemur:lora_adapter_load_seconds_count" in text
    lines = [json.loads(x) for x in lora_server.log_path.read_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("logger") == "lemur.access" and x.get("route") == "/v1/chat/completions"]
    assert {"handmade", "house-style"} <= {x.get("model") for x in access}


def test_the_picker_sees_the_adapters(lora_server: LiveServer) -> None:
    """vllm:lora_requests_info with the labels the endpoint picker routes adapters by."""
    text = httpx.get(lora_server.url("/metrics"), timeout=10).text
    assert missing(text, dict([LORA_INFO])) == []


def test_runtime_loading_is_off_by_default(server: LiveServer) -> None:
    r = httpx.post(
        server.url("/v1/load_lora_adapter"),
        json={"lora_name": "x", "lora_path": "/tmp"},
        headers=server.headers(),
        timeout=10,
    )
    assert r.status_code == 404 and "--lora-admin-key" in r.json()["error"]["message"]


def test_unload_waits_for_the_streams_using_the_adapter(lora_server: LiveServer, lora_client, adapters) -> None:
    """Unloading an adapter mid-stream: the stream finishes whole, the unload
    answers after it, and the engine keeps serving."""
    import threading

    body = {"lora_name": "draining", "lora_path": str(adapters["handmade-2"])}
    assert _admin(lora_server, "/v1/load_lora_adapter", body).status_code == 200
    stream = lora_client.completions.create(
        model="draining", prompt="def f():", max_tokens=300, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    first = next(chunks)
    unloaded: list[httpx.Response] = []
    unloader = threading.Thread(
        target=lambda: unloaded.append(_admin(lora_server, "/v1/unload_lora_adapter", {"lora_name": "draining"}))
    )
    unloader.start()
    rest = list(chunks)
    unloader.join(timeout=120)
    finish = [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert unloaded and unloaded[0].status_code == 200, unloaded
    assert "draining" not in {m.id for m in lora_client.models.list().data}
    assert ask(lora_client, "house-style", QUESTIONS[0]).startswith(STYLE_PREFIX.strip())


def test_an_evicted_adapter_whose_folder_is_gone_still_serves(
    lora_server: LiveServer, lora_client: openai.OpenAI, adapters, tmp_path: Path
) -> None:
    """Finding 2: vLLM keeps --max-cpu-loras adapters in memory (here as many
    as --max-loras: 2) and reloads an evicted one from its path. Load A and B,
    use B and two others (A is evicted), delete A's folder, ask A: the engine
    used to crash."""
    folder_a = shutil.copytree(adapters["handmade-2"], tmp_path / "evicted-a")
    folder_b = shutil.copytree(adapters["handmade"], tmp_path / "evicted-b")
    for name, folder in (("evicted-a", folder_a), ("evicted-b", folder_b)):
        r = _admin(lora_server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)})
        assert r.status_code == 200, r.text
    first = ask(lora_client, "evicted-a", QUESTIONS[1])
    for other in ("evicted-b", "handmade", "house-style"):  # the two most recent: A is evicted
        ask(lora_client, other, QUESTIONS[1])
    shutil.rmtree(folder_a)
    assert ask(lora_client, "evicted-a", QUESTIONS[1]) == first  # reloaded, from the gateway's copy
    (folder_b / "adapter_model.safetensors").write_bytes(b"rewritten")
    ask(lora_client, "evicted-a", QUESTIONS[2])
    ask(lora_client, "evicted-b", QUESTIONS[2])
    assert httpx.get(lora_server.url("/health"), timeout=10).status_code == 200
    for name in ("evicted-a", "evicted-b"):
        assert _admin(lora_server, "/v1/unload_lora_adapter", {"lora_name": name}).status_code == 200
    assert ask(lora_client, "house-style", QUESTIONS[0]).startswith(STYLE_PREFIX.strip())


def test_a_forged_safetensors_header_is_a_400_not_a_500(lora_server: LiveServer, adapters, tmp_path: Path) -> None:
    """Finding 7: a shape of [10**15, "x"] was multiplied out (a 10**15-char
    string) before anything checked it."""
    for i, shape in enumerate(([10**15, "x"], [2**62, 2**62], [-2, -2])):
        forged = forge_weights(shutil.copytree(adapters["handmade"], tmp_path / f"forged-{i}"),
                               {"dtype": "F32", "shape": shape, "data_offsets": [0, 16]}, b"\0" * 16)  # fmt: skip
        r = _admin(lora_server, "/v1/load_lora_adapter", {"lora_name": f"forged-{i}", "lora_path": str(forged)})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_adapter" and "corrupt" in r.json()["error"]["message"]
    assert httpx.get(lora_server.url("/health"), timeout=10).status_code == 200
