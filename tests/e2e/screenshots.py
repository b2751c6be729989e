"""The README's playground screenshots, on the trained default model:

    make model browser
    .venv/bin/python -m tests.e2e.screenshots --model models/lemur-tiny-chat --out docs/images

(`make screenshots` does both.) The page and the browser are driven as in
tests/e2e/test_playground.py, through its helpers; the test run itself
writes its screenshots (of the untrained test model) to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lemur.server import live
from tests.e2e.test_playground import (
    PHONE,
    make_driver,
    open_page,
    reply_done,
    send,
    set_value,
    wait_for,
)

KEY = "sk-lemur-screenshots"
QUESTION = "Which module defines OrderedDict?"
# The weather tool as the model was trained on it (training/sft_tools.py), asked about a held-out city.
WEATHER_TOOL = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "required": ["city", "unit"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}}}}}]  # fmt: skip


def reply_shot(driver, server: live.LiveServer, out: Path) -> None:
    open_page(driver, server, KEY)
    wait_for(lambda: driver.execute_script("return document.querySelectorAll('#model option').length"))
    set_value(driver, "max_tokens", "120")
    set_value(driver, "temperature", "0")  # its best guess, the same on every run
    send(driver, QUESTION)
    wait_for(lambda: reply_done(driver), 120, "the reply")
    driver.save_screenshot(str(out / "playground-desktop.png"))
    driver.set_window_size(*PHONE)
    driver.execute_script("document.getElementById('settings').open = false; window.scrollTo(0, 0)")
    time.sleep(0.3)
    driver.save_screenshot(str(out / "playground-phone.png"))


def tool_shot(driver, server: live.LiveServer, out: Path) -> None:
    open_page(driver, server, KEY)
    wait_for(lambda: driver.execute_script("return document.querySelectorAll('#model option').length"))
    driver.execute_script("document.getElementById('tools-panel').open = true")
    set_value(driver, "tools", json.dumps(WEATHER_TOOL, indent=1))
    set_value(driver, "max_tokens", "200")
    set_value(driver, "temperature", "0")
    send(driver, "What is the weather in Tokyo?")
    wait_for(lambda: reply_done(driver), 120, "the tool-call reply")
    card = wait_for(lambda: driver.find_elements("css selector", ".tool-card"), 10, "a tool-call card")[0]
    card.find_element("css selector", "textarea").send_keys('{"temperature_c": 21, "sky": "clear"}')
    driver.save_screenshot(str(out / "playground-tool-call.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/lemur-tiny-chat"))
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = live.start(args.model, log, ["--api-key", KEY], api_key=KEY)
    driver = make_driver()
    try:
        reply_shot(driver, server, args.out)
        tool_shot(driver, server, args.out)
    finally:
        driver.quit()
        live.stop(server)
    print(f"screenshots of {args.model.name} in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
