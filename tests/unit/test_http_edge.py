"""The HTTP edge: logs cannot be forged through a request (text logs keep one
record per line), and --metrics-port keeps per-key series off the API port."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from lemur.server.logs import TextFormatter
from tests.conftest import start_server, stop_server

FAKE_LINE = "INFO lemur.auth: admin key accepted"


def test_text_formatter_escapes_control_characters() -> None:
    record = logging.LogRecord("lemur.access", logging.INFO, "", 0, "GET %s 404", (f"/x\n{FAKE_LINE}\x1b[2J\r",), None)
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "INFO lemur.access: GET /x\\nINFO lemur.auth: admin key accepted\\x1b[2J\\r 404"


def test_a_newline_in_the_url_does_not_forge_a_log_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """On a live gateway (mock engine: this is about the HTTP edge) with text logs."""
    server = start_server(tiny_checkpoint, tmp_path / "server.log", ["--engine", "mock", "--log-format", "text"])
    try:
        r = httpx.get(server.url("/v1/models%0A" + FAKE_LINE.replace(" ", "%20")), timeout=10)
        assert r.status_code == 404
    finally:
        stop_server(server)
    lines = server.log_path.read_text().splitlines()
    assert not any(line.startswith(FAKE_LINE) for line in lines)
    assert any("\\n" + FAKE_LINE in line for line in lines), "the request should still be logged, escaped"


def test_metrics_port_keeps_key_names_off_the_api_port(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--metrics-port: /metrics (with its per-key series) on its own listener."""
    from tests.conftest import API_KEY, free_port

    port = free_port()
    extra = ["--engine", "mock", "--api-key", API_KEY, "--metrics-port", str(port)]
    server = start_server(tiny_checkpoint, tmp_path / "server.log", extra)
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(server.url("/v1/chat/completions"), json=body, headers=auth, timeout=30).status_code == 200
        on_api = httpx.get(server.url("/metrics"), headers=auth, timeout=10)
        assert on_api.status_code == 404 and str(port) in on_api.json()["error"]["message"]
        apart = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert apart.status_code == 200
        assert 'lemur:key_requests_total{key="default",status="200"} 1.0' in apart.text
        assert "lemur:num_requests_queued" in apart.text
        assert "python_info" in apart.text  # the process registry too (where vLLM's series live)
    finally:
        stop_server(server)
