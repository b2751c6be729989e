"""/metrics as the endpoint picker reads it, on the real engine, parsed with
prometheus_client (tests/support/picker.py): every series and label of its
default configuration, and the queue depth it is pointed at."""

from __future__ import annotations

import httpx
import pytest

from tests.support.picker import PICKER_READS, missing

pytestmark = pytest.mark.e2e


def test_every_series_the_picker_reads_is_there(server) -> None:
    r = httpx.get(server.url("/metrics"), timeout=10)  # no key: the picker scrapes without one
    assert r.status_code == 200
    assert missing(r.text, PICKER_READS) == []
