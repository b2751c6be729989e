"""API keys (hashed, named, from a file or env), per-key limits, request ids
and what the logs may contain: over the fake engine (pure gateway logic)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from lemur.server.app import create_app
from lemur.server.auth import ANONYMOUS, ENV_VAR, KeyStore, hash_line, parse_keys_file
from lemur.server.config import GatewayConfig
from lemur.server.ratelimit import TokenBucket
from tests.support.fake_engine import FakeEngine

ALICE, BOB = "sk-alice-0123456789", "sk-bob-9876543210"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture()
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"# team keys\n{hash_line(ALICE, 'alice')} rpm=2\n\n{hash_line(BOB, 'bob')} tpm=1000000\n")
    return path


def test_keys_file_holds_only_hashes(keys_file: Path) -> None:
    text = keys_file.read_text()
    assert ALICE not in text and BOB not in text
    keys = parse_keys_file(keys_file)
    assert [(k.name, k.rpm, k.tpm) for k in keys] == [("alice", 2.0, None), ("bob", None, 1e6)]
    store = KeyStore(keys)
    assert store.authenticate(ALICE).name == "alice"
    assert store.authenticate(BOB).name == "bob"
    assert store.authenticate("sk-mallory") is None


def test_bad_keys_file_line_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "k.txt"
    bad.write_text("plaintext-key alice\n")
    with pytest.raises(ValueError, match=r"k\.txt:1"):
        parse_keys_file(bad)


def test_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "k1, k2")
    store = KeyStore.from_sources("k0", None)
    assert [store.authenticate(k).name for k in ("k0", "k1", "k2")] == ["default", "env-0", "env-1"]


def test_token_bucket_refill_and_debt() -> None:
    bucket = TokenBucket(60)  # 60 per minute: 1 per second
    assert bucket.wait_for(60) == 0
    bucket.take(70)  # 10 into debt
    assert bucket.wait_for(1) == pytest.approx(11.0, abs=0.1)


@pytest.fixture()
def keyed_client(tiny_checkpoint: Path, keys_file: Path):
    fake = FakeEngine(str(tiny_checkpoint), vocab_size=2053)
    config = GatewayConfig(served_model_names=("tiny",), api_keys_file=keys_file)
    with TestClient(create_app(config, lambda: fake)) as client:
        yield client


def test_rpm_limit_per_key(keyed_client: TestClient) -> None:
    alice = {"Authorization": f"Bearer {ALICE}"}
    bob = {"Authorization": f"Bearer {BOB}"}
    assert [keyed_client.post("/v1/chat/completions", json=BODY, headers=alice).status_code for _ in range(2)] == [
        200,
        200,
    ]
    r = keyed_client.post("/v1/chat/completions", json=BODY, headers=alice)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["Retry-After"]) <= 31
    assert "alice" in r.json()["error"]["message"] and ALICE not in r.text
    # Another key is not affected.
    assert keyed_client.post("/v1/chat/completions", json=BODY, headers=bob).status_code == 200
    metrics = keyed_client.get("/metrics", headers=bob).text
    assert 'lemur:key_requests_total{key="alice",status="429"} 1.0' in metrics
    assert 'lemur:key_tokens_total{key="bob",kind="generation"} 3.0' in metrics
    assert ALICE not in metrics and BOB not in metrics


def test_tpm_limit(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"{hash_line(ALICE, 'alice')} tpm=40\n")
    fake = FakeEngine(str(tiny_checkpoint), vocab_size=2053)
    config = GatewayConfig(served_model_names=("tiny",), api_keys_file=path)
    alice = {"Authorization": f"Bearer {ALICE}"}
    with TestClient(create_app(config, lambda: fake)) as client:
        body = {**BODY, "max_tokens": 30}
        assert client.post("/v1/chat/completions", json=body, headers=alice).status_code == 200
        r = client.post("/v1/chat/completions", json=body, headers=alice)  # the budget went into debt
        assert r.status_code == 429


def test_request_id_honoured_and_logs_hold_no_key(keyed_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    headers = {"Authorization": f"Bearer {BOB}", "X-Request-ID": "trace-42"}
    r = keyed_client.post("/v1/chat/completions", json=BODY, headers=headers)
    assert r.headers["x-request-id"] == "trace-42"
    generated = keyed_client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    bad = keyed_client.post("/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer sk-wrong-key"})
    assert bad.status_code == 401
    access = [r for r in caplog.records if r.name == "lemur.access"]
    assert any(getattr(r, "key", None) == "bob" and r.status == 200 for r in access)
    text = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert BOB not in text and "sk-wrong-key" not in text
    assert not any(hasattr(r, "body") or hasattr(r, "response") for r in caplog.records)  # no prompts by default


def test_successful_probes_and_scrapes_are_debug_lines(tiny_checkpoint: Path, keys_file: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A picker scrapes 20 times a second: at INFO its lines would bury the log.
    A refused scrape is an INFO line like any other request."""
    fake = FakeEngine(str(tiny_checkpoint), vocab_size=2053)
    config = GatewayConfig(served_model_names=("tiny",), api_keys_file=keys_file, metrics_require_key=True)
    with TestClient(create_app(config, lambda: fake)) as client:
        caplog.set_level(logging.INFO, logger="lemur.access")
        client.get("/health")
        client.get("/metrics", headers={"Authorization": f"Bearer {BOB}"})
        client.get("/metrics")  # 401
        assert [r.getMessage() for r in caplog.records if r.name == "lemur.access"] == ["GET /metrics 401"]
        caplog.set_level(logging.DEBUG, logger="lemur.access")
        client.get("/ready")
        last = [r for r in caplog.records if r.name == "lemur.access"][-1]
        assert (last.levelno, last.route) == (logging.DEBUG, "/ready")


def test_metrics_can_require_a_key(tiny_checkpoint: Path, keys_file: Path) -> None:
    fake = FakeEngine(str(tiny_checkpoint), vocab_size=2053)
    config = GatewayConfig(served_model_names=("tiny",), api_keys_file=keys_file, metrics_require_key=True)
    with TestClient(create_app(config, lambda: fake)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200


def test_keys_file_readable_by_others_is_warned(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys_file.chmod(0o644)
    with caplog.at_level("WARNING", logger="lemur.auth"):
        parse_keys_file(keys_file)
    assert "readable by others (mode 0o644): chmod 600" in caplog.text
    caplog.clear()
    keys_file.chmod(0o600)
    with caplog.at_level("WARNING", logger="lemur.auth"):
        parse_keys_file(keys_file)
    assert caplog.text == ""


def test_duplicate_key_names_and_keys_are_refused(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text(f"{hash_line(ALICE, 'team')}\n{hash_line(BOB, 'team')}\n")
    with pytest.raises(ValueError, match="names must be unique; repeated: team"):
        KeyStore.from_sources(None, names)
    same = tmp_path / "same.txt"
    same.write_text(f"{hash_line(ALICE, 'alice')}\n{hash_line(ALICE, 'alice2')}\n")
    with pytest.raises(ValueError, match="listed twice"):
        KeyStore.from_sources(None, same)
    # --api-key is named "default": a file entry of that name collides with it.
    clash = tmp_path / "clash.txt"
    clash.write_text(f"{hash_line(BOB, 'default')}\n")
    with pytest.raises(ValueError, match="repeated: default"):
        KeyStore.from_sources(ALICE, clash)


def test_lemur_serve_refuses_duplicate_key_names_before_loading_the_engine(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    keys = tmp_path / "keys.txt"
    keys.write_text(f"{hash_line(ALICE, 'team')}\n{hash_line(BOB, 'team')}\n")
    cmd = [sys.executable, "-m", "lemur", "serve", str(tmp_path), "--api-keys-file", str(keys)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "repeated: team" in out.stderr


def test_anonymous_callers_get_the_default_limits(tiny_checkpoint: Path) -> None:
    """No keys configured is not a way around --rate-limit-rpm."""
    fake = FakeEngine(str(tiny_checkpoint), vocab_size=2053)
    config = GatewayConfig(served_model_names=("tiny",), rate_limit_rpm=2)
    with TestClient(create_app(config, lambda: fake)) as client:
        statuses = [client.post("/v1/chat/completions", json=BODY).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_what_counts_as_loopback() -> None:
    from lemur.server.auth import is_loopback

    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.1.2.3", "192.168.1.5", "lemur.example.com", "")))


def test_non_loopback_without_keys_refuses_to_start(tiny_checkpoint: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "LEMUR_API_KEYS"}
    for host in ("0.0.0.0", "lemur.example.com"):
        cmd = [sys.executable, "-m", "lemur", "serve", str(tiny_checkpoint), "--host", host]
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (host, out.stderr[-500:])
        assert f"refusing to serve on {host} without API keys" in out.stderr


def test_allow_unauthenticated_starts_with_a_warning(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The mock engine: this is about the gateway's start-up check, not the model."""
    from tests.conftest import start_server, stop_server

    extra = ["--engine", "mock", "--host", "0.0.0.0", "--allow-unauthenticated"]
    server = start_server(tiny_checkpoint, tmp_path / "open.log", extra, env={"LEMUR_API_KEYS": ""})
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(server.url("/v1/chat/completions"), json=body, timeout=30).status_code == 200
    finally:
        stop_server(server)
    assert "serving on 0.0.0.0 with no API keys (--allow-unauthenticated)" in server.log_path.read_text()


def test_tokenize_is_rate_limited(keyed_client: TestClient) -> None:
    """/tokenize costs the tokenizer real work: it counts against the key's RPM."""
    alice = {"Authorization": f"Bearer {ALICE}"}
    body = {"prompt": "def main(): pass"}
    statuses = [keyed_client.post("/tokenize", json=body, headers=alice).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = keyed_client.post("/v1/chat/completions", json=BODY, headers=alice)
    assert r.status_code == 429  # one budget for every route


def test_token_budget_is_reserved_up_front_and_refunded() -> None:
    """tpm: a request reserves prompt + n x max_tokens before it runs (two
    requests can no longer both start on a budget that fits one), and gets
    back what it did not use when it ends."""
    from lemur.server.auth import ApiKey
    from lemur.server.ratelimit import KeyLimiter, RateLimited
    from lemur.server.serving.context import Account

    limits = KeyLimiter(ApiKey("carol", b"", tpm=1000))
    first = Account("carol", limits)
    first.reserve(900)  # e.g. 100 prompt tokens + max_tokens 800
    with pytest.raises(RateLimited):
        Account("carol", limits).reserve(500)  # refused before any token was generated
    first.use(100 + 40)  # it stopped after 40 tokens
    first.settle()
    first.settle()  # once only
    assert limits.tokens is not None and limits.tokens.level == pytest.approx(1000 - 140, abs=1)
    Account("carol", limits).reserve(500)  # fits again


def test_a_stream_that_ends_early_refunds_its_reservation(tiny_checkpoint: Path) -> None:
    """Through the gateway (fake engine): the refund happens when the request ends."""
    fake = FakeEngine(str(tiny_checkpoint), vocab_size=2053, stop_after=3)
    config = GatewayConfig(served_model_names=("tiny",), rate_limit_tpm=300)
    with TestClient(create_app(config, lambda: fake)) as client:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
        for stream in (False, True, False):
            # Each reserves ~212 of 300 tokens; without the refund the second would be a 429.
            r = client.post("/v1/chat/completions", json={**body, "stream": stream})
            assert r.status_code == 200, r.text
        limiter = client.app.state.ctx.limiter.for_key(ANONYMOUS)
        assert limiter.tokens.level > 250  # 3 x (12 prompt + 3 generated) spent
