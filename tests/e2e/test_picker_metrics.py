"""/metrics as the endpoint picker reads it, on the real engine, parsed with
prometheus_client (tests/support/picker.py): every series and label of its
default configuration for vLLM, and of the routing overlay's configuration
(which points it at the gateway's queue)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.picker import VLLM_DEFAULT_READS, missing, picker_reads

pytestmark = pytest.mark.e2e


def test_every_series_the_picker_reads_is_there(server) -> None:
    r = httpx.get(server.url("/metrics"), timeout=10)  # no key: the picker scrapes without one
    assert r.status_code == 200
    assert missing(r.text, VLLM_DEFAULT_READS) == []
    assert missing(r.text, picker_reads()) == []
