"""Logs cannot be forged through a request: text logs keep one record per line."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from server.logs import TextFormatter
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
