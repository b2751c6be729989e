"""The playground page in real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) against the real server and engine.

The shared server requires API keys, so the page asks for one first. The
screenshots go to a temporary folder, or to $LEMUR_SCREENSHOTS when set
(`LEMUR_SCREENSHOTS=docs/images` retakes the README's)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, LiveServer

pytestmark = pytest.mark.e2e

DESKTOP, PHONE = (1280, 900), (360, 780)
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WEATHER_TOOL = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"]}}}]  # fmt: skip


def make_driver():
    """Debian's headless Chromium through its local chromedriver (no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser() -> Iterator:
    driver = make_driver()
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def open_page(driver, server: LiveServer, key: str | None = API_KEY) -> None:
    """Load the page in a fresh tab state and give it `key` through its dialog."""
    driver.set_window_size(*DESKTOP)
    driver.get_log("browser")  # what earlier tests left in the log is theirs
    driver.get(server.url("/playground"))
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.url("/playground"))
    if key is not None:
        wait_for(lambda: driver.find_element("id", "key-dialog").get_attribute("open") is not None, what="key dialog")
        driver.find_element("id", "key-input").send_keys(key)
        driver.find_element("id", "key-save").click()


def model_names(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#model option')].map(o => o.value)")


def set_value(driver, element_id: str, value: str) -> None:
    driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, value)


def send(driver, text: str) -> None:
    driver.find_element("id", "prompt").send_keys(text)
    driver.find_element("id", "send").click()


def replies(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.msg.assistant .body')].map(b => b.textContent)"
    )


def reply_done(driver) -> bool:
    return driver.execute_script(
        "return !document.querySelector('.msg.streaming') && document.querySelectorAll('.msg.assistant').length > 0"
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: a temporary folder unless $LEMUR_SCREENSHOTS names one."""
    chosen = os.environ.get("LEMUR_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_page_loads_without_errors_asks_for_a_key_and_lists_the_model(browser, server: LiveServer) -> None:
    r = httpx.get(server.url("/"), timeout=10)  # no key needed: the page is static
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("..%2Froutes.py", "..%2F..%2Fpyproject.toml", "playground.py"):  # only the page's own files
        assert httpx.get(server.url("/playground/static/" + name), timeout=10).status_code == 404, name
    open_page(browser, server)
    wait_for(lambda: model_names(browser), what="the model list")
    assert model_names(browser) == ["lemur-tiny-chat-untrained"]
    assert browser.execute_script("return sessionStorage.getItem('lemur-api-key')") == API_KEY
    assert console_errors(browser) == []


def test_a_reply_streams_in_token_by_token(browser, server: LiveServer, images: Path) -> None:
    open_page(browser, server)
    wait_for(lambda: model_names(browser), what="the model list")
    set_value(browser, "max_tokens", "120")
    set_value(browser, "seed", "7")
    # Record the reply's length at every change the page makes to it.
    browser.execute_script("""
        window.__lengths = [];
        new MutationObserver(() => {
          const body = document.querySelector('.msg.assistant:last-of-type .body');
          if (body) window.__lengths.push(body.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    """)
    send(browser, "Tell me about the json module.")
    wait_for(lambda: reply_done(browser), 60, "the reply")
    lengths = browser.execute_script("return window.__lengths")
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 3, lengths  # the text grew over at least 3 observations before it finished
    meta = browser.find_element("css selector", ".msg.assistant .meta").text
    assert "TTFT" in meta and "tok/s" in meta and " in / 120 out" in meta and "finish: length" in meta, meta
    browser.save_screenshot(str(images / "playground-desktop.png"))
    browser.set_window_size(*PHONE)
    browser.execute_script("document.getElementById('settings').open = false; window.scrollTo(0, 0)")
    time.sleep(0.3)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]  # no sideways scroll
    browser.save_screenshot(str(images / "playground-phone.png"))
    assert console_errors(browser) == []


def _engine_idle(server: LiveServer) -> bool:
    text = httpx.get(server.url("/metrics"), timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))]  # fmt: skip
    return bool(values) and all(v == 0 for v in values)


def test_stop_cancels_the_request_and_the_engine_goes_idle(browser, server: LiveServer) -> None:
    open_page(browser, server)
    wait_for(lambda: model_names(browser), what="the model list")
    # A grammar that cannot end before 400 digits: the reply is long whatever the model would do.
    digits = {"type": "array", "minItems": 400, "items": {"type": "integer", "minimum": 0, "maximum": 9}}
    schema = {"type": "object", "properties": {"digits": digits}, "required": ["digits"]}
    browser.execute_script("document.getElementById('json-panel').open = true")
    browser.find_element("id", "json_mode").click()
    set_value(browser, "schema", json.dumps(schema))
    set_value(browser, "max_tokens", "460")
    send(browser, "Count.")
    wait_for(lambda: (replies(browser) or [""])[-1], 30, "the first tokens")
    browser.find_element("id", "stop-button").click()
    wait_for(lambda: reply_done(browser), 10, "the page to stop")
    assert "finish: stopped" in browser.find_element("css selector", ".msg.assistant .meta").text
    wait_for(lambda: _engine_idle(server), 15, "running = waiting = 0 in the engine")
    assert console_errors(browser) == []


def test_a_wrong_key_shows_the_servers_message(browser, server: LiveServer) -> None:
    open_page(browser, server, key="sk-wrong")
    status = wait_for(lambda: browser.find_element("id", "status").text, what="the error")
    assert status == "Incorrect API key provided."
    assert browser.find_element("id", "key-dialog").get_attribute("open") is not None  # asks again
    errors = console_errors(browser)  # the browser reports the failed request itself, and nothing else
    assert errors and all("/v1/models" in e and "401" in e for e in errors), errors


def test_model_output_is_shown_as_text_never_run(browser, server: LiveServer) -> None:
    """The grammar makes the real model write markup; the page must show it as text."""
    markup = {"a": '<img src=x onerror="window.__xss=1">', "b": "<script>window.__xss=2</script>"}
    schema = {"type": "object", "properties": {k: {"const": v} for k, v in markup.items()}, "required": ["a", "b"]}
    open_page(browser, server)
    wait_for(lambda: model_names(browser), what="the model list")
    browser.execute_script("window.__xss = 0; document.getElementById('json-panel').open = true")
    browser.find_element("id", "json_mode").click()
    set_value(browser, "schema", json.dumps(schema))
    set_value(browser, "max_tokens", "200")
    send(browser, "Reply in JSON.")
    wait_for(lambda: reply_done(browser), 60, "the reply")
    text = replies(browser)[-1]
    assert json.loads(text) == markup  # the model wrote the markup, shown verbatim
    time.sleep(0.5)
    assert browser.execute_script("return window.__xss") == 0
    assert browser.execute_script("return document.querySelectorAll('#messages img, #messages script').length") == 0


def test_tool_calls_show_as_cards_and_the_result_continues(browser, server: LiveServer, images: Path) -> None:
    open_page(browser, server)
    wait_for(lambda: model_names(browser), what="the model list")
    browser.execute_script("document.getElementById('tools-panel').open = true")
    set_value(browser, "tools", json.dumps(WEATHER_TOOL, indent=1))
    set_value(browser, "tool_choice", "required")
    # One call, then the grammar allows only the end: the untrained model
    # cannot run on into more calls until max_tokens (a CI run did, on a
    # machine whose numerics differ). 12 characters of city fit in 200 tokens
    # even if every one is a 6-token escape.
    browser.find_element("id", "parallel_tool_calls").click()
    set_value(browser, "max_tokens", "200")
    set_value(browser, "seed", "3")
    send(browser, "What is the weather in Lisbon?")
    wait_for(lambda: reply_done(browser), 60, "the tool-call reply")
    meta = browser.find_element("css selector", ".msg.assistant .meta").text
    assert "finish: tool_calls" in meta, meta
    card = browser.find_element("css selector", ".tool-card")
    assert card.find_element("css selector", ".tool-name").text == "call get_weather"
    assert set(json.loads(card.find_element("css selector", "pre").text)) == {"city"}
    card.find_element("css selector", "textarea").send_keys('{"temperature_c": 21, "sky": "clear"}')
    browser.save_screenshot(str(images / "playground-tool-call.png"))
    set_value(browser, "tool_choice", "none")  # now answer in text
    browser.find_element("css selector", "button.continue").click()
    wait_for(lambda: len(browser.find_elements("css selector", ".msg.assistant")) == 2 and reply_done(browser),
             60, "the reply after the tool result")  # fmt: skip
    tool_msgs = browser.find_elements("css selector", ".msg.tool .body")
    assert [m.text for m in tool_msgs] == ['{"temperature_c": 21, "sky": "clear"}']
    assert console_errors(browser) == []
