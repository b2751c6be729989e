"""Agent clients as shipped, against `lemur serve` on a checkpoint crafted to
end its turns (lemur.training.tiny.build_turn_ender) with a 32k context:
npm's Codex CLI (`codex exec`, the Responses API) and Claude Code (`claude
-p`, the Messages API), pinned and installed by `make agents`, with
telemetry and update checks off; and the OpenAI Agents SDK. A forced first
turn calls the tool (the grammar holds its arguments); the replies that
follow end at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from tests.conftest import API_KEY, REPO, LiveServer, start_server, stop_server

pytestmark = pytest.mark.e2e
CONTEXT = 32768
MODEL = "lemur-tiny-turn-ender"
NPM_BIN = REPO / ".venv" / "npm" / "node_modules" / ".bin"
PROMPT = "Say hello."


@pytest.fixture(scope="module")
def ender(turn_ender_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("ender") / "server.log"
    server = start_server(turn_ender_checkpoint, log, ["--api-key", API_KEY, "--max-model-len", str(CONTEXT),
                                                       "--served-model-name", MODEL])  # fmt: skip
    yield server
    stop_server(server)


def test_openai_agents_runner_with_a_function_tool_runs_to_the_end(ender: LiveServer) -> None:
    """The SDK runs the call, sends the result back, resets tool_choice to
    auto, and the empty reply that follows ends the run. Tracing is off: it
    would upload to OpenAI."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    calls: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: Annotated[str, Field(max_length=16)], unit: Literal["celsius", "fahrenheit"]) -> str:
        """Current weather for a city."""
        calls.append((city, unit))
        return f"21 degrees {unit} in {city}"

    client = AsyncOpenAI(base_url=ender.url("/v1"), api_key=ender.api_key, max_retries=0, timeout=60)
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(tool_choice="required", temperature=0),
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert len(calls) == 1 and calls[0][1] in ("celsius", "fahrenheit") and len(calls[0][0]) <= 16
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"], kinds
    assert result.final_output == ""


def _client(name: str) -> str:
    path = NPM_BIN / name
    assert path.exists(), f"{path} is missing: `make agents` installs the pinned agent clients"
    return str(path)


def _requests(server: LiveServer, route: str) -> list[dict]:
    """The access log's lines for `route`."""
    lines = server.log_path.read_text(errors="replace").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{") and '"lemur.access"' in line]
    return [e for e in entries if e.get("route") == route]


def test_codex_exec_completes_a_turn(ender: LiveServer, tmp_path: Path) -> None:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(f"""model = "{MODEL}"
model_provider = "lemur"
model_context_window = {CONTEXT}
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.lemur]
name = "Lemur Serve"
base_url = "{ender.url("/v1")}"
env_key = "LEMUR_API_KEY"
wire_api = "responses"
""")
    env = {**os.environ, "CODEX_HOME": str(home), "LEMUR_API_KEY": API_KEY}
    cmd = [_client("codex"), "exec", "--skip-git-repo-check", "--ephemeral", "--json", PROMPT]
    run = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    kinds = [e["type"] for e in events]
    assert run.returncode == 0 and "turn.completed" in kinds and "turn.failed" not in kinds, run.stdout + run.stderr
    # Codex warns that it has no metadata for a model it does not know; nothing else may go wrong.
    errors = [e["item"]["message"] for e in events if e.get("item", {}).get("type") == "error"]
    assert all(m.startswith(f"Model metadata for `{MODEL}` not found") for m in errors), errors
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["input_tokens"] > 5000  # Codex's own long first prompt, whole in the 32k context
    assert [r["status"] for r in _requests(ender, "/v1/responses")][-1:] == [200]


def test_claude_code_completes_a_turn(ender: LiveServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # its settings and session files
        "ANTHROPIC_BASE_URL": ender.base_url,
        "ANTHROPIC_API_KEY": API_KEY,  # sent as x-api-key
        "ANTHROPIC_MODEL": MODEL,
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry, error reports or update checks
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }
    cmd = [_client("claude"), "-p", PROMPT, "--output-format", "json"]
    run = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0 and result["is_error"] is False, run.stdout[-2000:] + run.stderr[-2000:]
    assert result["terminal_reason"] == "completed" and result["stop_reason"] == "end_turn"
    assert result["usage"]["input_tokens"] + result["usage"]["cache_read_input_tokens"] > 5000
    statuses = [r["status"] for r in _requests(ender, "/v1/messages")]
    assert statuses and all(s == 200 for s in statuses), statuses
