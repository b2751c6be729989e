"""Tool-use conversations for the demo SFT set, in Lemur's tool format.

A small catalogue of everyday functions (weather, time, currency, timers,
...). Each conversation lists one or two of them in the system turn; then
either the user asks for something one of them does, and the assistant calls
it, reads the result (a `tool` turn) and answers; or nothing fits (a
question about the standard library, a greeting) and the assistant answers in
text. Generated deterministically from a seed.

Slot values (cities, amounts, names, ...) are split in two: even positions
for training, odd for evaluation (`split="eval"`), so the held-out prompts
of benchmarks/tool_use.py ask for things the model never saw.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lemur.training.sft_demo import SYSTEM_PROMPT, ApiItem, _qa, iter_api_items

Slots = dict[str, Any]

CITIES = [
    "Paris",
    "Tokyo",
    "Lima",
    "Oslo",
    "Cairo",
    "Denver",
    "Madrid",
    "Seoul",
    "Nairobi",
    "Dublin",
    "Perth",
    "Quito",
    "Vienna",
    "Hanoi",
    "Boston",
    "Lagos",
    "Rome",
    "Delhi",
    "Austin",
    "Prague",
]
ZONES = ["UTC", "CET", "PST", "JST", "EST", "IST"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "INR", "CAD", "AUD"]
PEOPLE = ["Ada", "Linus", "Grace", "Alan", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Guido"]
SUBJECTS = ["the release", "lunch", "the budget", "the outage", "the demo", "the review", "the roadmap", "travel"]
TOPICS = [
    "asyncio",
    "pathlib",
    "decorators",
    "generators",
    "dataclasses",
    "typing",
    "logging",
    "unittest",
    "regular expressions",
    "context managers",
]
SYMBOLS = ["ACME", "GLOBX", "INITECH", "UMBRL", "WAYNE", "STARK", "HOOLI", "SOYL"]
LANGUAGES = ["French", "German", "Spanish", "Italian", "Japanese", "Dutch"]
PHRASES = ["good morning", "thank you", "see you soon", "where is the station", "how much is it", "happy birthday"]
FILES = ["README.md", "setup.cfg", "notes.txt", "config.toml", "todo.md", "main.py", "Makefile", "data.csv"]
EVENTS = ["dentist", "team sync", "yoga", "book club", "flight", "interview", "haircut", "code review"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SMALL_TALK = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Thanks, that is all.", "You are welcome."),
    ("Who are you?", "I am Lemur, a helpful assistant."),
    ("Good night!", "Good night!"),
]


def _string(enum: list[str] | None = None) -> dict[str, Any]:
    return {"type": "string", "enum": enum} if enum else {"type": "string"}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    properties: dict[str, dict[str, Any]]
    asks: tuple[str, ...]  # user requests, formatted with the slots
    slots: Callable[[random.Random, int], Slots]  # (rng, parity) -> argument values
    result: Callable[[random.Random, Slots], dict[str, Any]]
    answer: str  # formatted with the slots and the result

    def function(self) -> dict[str, Any]:
        # Short schemas (few enums): a tiny model's context is 512 tokens, and its
        # 1024-token vocabulary spends about one token per 2-3 characters of JSON.
        parameters = {"type": "object", "properties": self.properties, "required": list(self.properties)}
        return {"name": self.name, "description": self.description, "parameters": parameters}


def _pick(rng: random.Random, pool: list[Any], parity: int) -> Any:
    """A value from the half of `pool` that belongs to the split."""
    return rng.choice(pool[parity::2])


TOOLS = [
    ToolSpec(
        "get_weather",
        "Current weather in a city.",
        {"city": _string(), "unit": _string(["C", "F"])},
        (
            "What is the weather in {city}?",
            "Is it raining in {city} right now?",
            "How warm is it in {city}, in {unit}?",
            "Weather for {city}, please.",
        ),
        lambda r, p: {"city": _pick(r, CITIES, p), "unit": r.choice(["C", "F"])},
        lambda r, s: {"temp": r.randint(-5, 35), "sky": r.choice(["clear", "cloudy", "rainy"])},
        "It is {temp} degrees {unit} and {sky} in {city}.",
    ),
    ToolSpec(
        "get_time",
        "Current time in a time zone.",
        {"zone": _string()},
        ("What time is it in {zone}?", "Tell me the time in {zone}.", "Current {zone} time?"),
        lambda r, p: {"zone": _pick(r, ZONES, p)},
        lambda r, s: {"time": f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"},
        "It is {time} in {zone}.",
    ),
    ToolSpec(
        "convert_currency",
        "Convert money between currencies.",
        {"amount": {"type": "number"}, "source": _string(), "target": _string()},
        ("Convert {amount} {source} to {target}.", "How much is {amount} {source} in {target}?"),
        lambda r, p: {
            "amount": r.choice([5, 12, 40, 99, 250, 1000][p::2]),
            "source": _pick(r, CURRENCIES, p),
            "target": _pick(r, CURRENCIES, 1 - p),
        },
        lambda r, s: {"result": round(s["amount"] * r.uniform(0.5, 2.0), 2)},
        "{amount} {source} is {result} {target}.",
    ),
    ToolSpec(
        "set_timer",
        "Start a countdown timer.",
        {"minutes": {"type": "integer"}},
        ("Set a timer for {minutes} minutes.", "Remind me in {minutes} minutes.", "Start a {minutes} minute timer."),
        lambda r, p: {"minutes": r.choice(list(range(1 + p, 61, 2)))},
        lambda r, s: {"status": "started"},
        "Your {minutes} minute timer has started.",
    ),
    ToolSpec(
        "send_email",
        "Send a short email.",
        {"to": _string(), "subject": _string()},
        ("Email {to} about {subject}.", "Send {to} a note about {subject}.", "Write to {to} regarding {subject}."),
        lambda r, p: {"to": _pick(r, PEOPLE, p), "subject": _pick(r, SUBJECTS, p)},
        lambda r, s: {"status": "sent"},
        "Done: {to} has your email about {subject}.",
    ),
    ToolSpec(
        "search_docs",
        "Search the Python documentation.",
        {"query": _string()},
        ("Search the docs for {query}.", "Find documentation about {query}.", "Look up {query} in the docs."),
        lambda r, p: {"query": _pick(r, TOPICS, p)},
        lambda r, s: {"title": f"{s['query'].capitalize()} HOWTO"},
        'The best match is the page "{title}".',
    ),
    ToolSpec(
        "get_stock_price",
        "Latest price of a stock.",
        {"symbol": _string()},
        ("What is {symbol} trading at?", "Price of {symbol} stock?", "How is {symbol} doing today?"),
        lambda r, p: {"symbol": _pick(r, SYMBOLS, p)},
        lambda r, s: {"price": round(r.uniform(5, 500), 2)},
        "{symbol} is at {price}.",
    ),
    ToolSpec(
        "translate",
        "Translate a phrase.",
        {"text": _string(), "language": _string()},
        ('Translate "{text}" to {language}.', 'How do you say "{text}" in {language}?'),
        lambda r, p: {"text": _pick(r, PHRASES, p), "language": _pick(r, LANGUAGES, p)},
        lambda r, s: {"translation": f"[{s['language'][:2].lower()}] {s['text']}"},
        "In {language}: {translation}",
    ),
    ToolSpec(
        "read_file",
        "Read a text file.",
        {"path": _string()},
        ("Show me {path}.", "What is in {path}?", "Open the file {path}."),
        lambda r, p: {"path": _pick(r, FILES, p)},
        lambda r, s: {"content": r.choice(["TODO: tests", "name = demo", "x,y\n1,2", "# Notes"])},
        "{path} contains: {content}",
    ),
    ToolSpec(
        "create_event",
        "Add an event to the calendar.",
        {"title": _string(), "day": _string()},
        ("Add {title} on {day} to my calendar.", "Schedule {title} for {day}.", "Put {title} in my calendar on {day}."),
        lambda r, p: {"title": _pick(r, EVENTS, p), "day": r.choice(DAYS)},
        lambda r, s: {"status": "created"},
        "{title} is in your calendar on {day}.",
    ),
]


def _listed(rng: random.Random, target: ToolSpec | None) -> list[ToolSpec]:
    """One or two tools in random order, including `target` if given."""
    others = [t for t in TOOLS if t is not target]
    listed = rng.sample(others, rng.randint(0, 1) if target else rng.randint(1, 2)) + ([target] if target else [])
    rng.shuffle(listed)
    return listed


def _system(rng: random.Random) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.3 else []


def tool_prompt(rng: random.Random, parity: int) -> tuple[list[dict[str, Any]], list[ToolSpec], ToolSpec, Slots]:
    """A request one listed tool fits: (messages so far, listed tools, the tool, its arguments)."""
    target = rng.choice(TOOLS)
    slots = target.slots(rng, parity)
    ask = rng.choice(target.asks).format(**slots)
    return [*_system(rng), {"role": "user", "content": ask}], _listed(rng, target), target, slots


def no_tool_prompt(rng: random.Random, items: list[ApiItem]) -> tuple[list[dict[str, Any]], list[ToolSpec], str]:
    """A request none of the listed tools fits, and its text answer."""
    if rng.random() < 0.25:
        question, answer = rng.choice(SMALL_TALK)
    else:
        question, answer = _qa(items[rng.randrange(len(items))], rng)
    return [*_system(rng), {"role": "user", "content": question}], _listed(rng, None), answer


def _api_items() -> list[ApiItem]:
    return sorted(set(iter_api_items()), key=lambda i: (i.module, i.name))


def _tools(listed: list[ToolSpec]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": t.function()} for t in listed]


def tool_conversations(count: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """`count` conversations: about 3 in 4 call a tool, the rest answer in text."""
    rng = random.Random(f"tools-{seed}-{split}")
    parity = 0 if split == "train" else 1
    items = _api_items()
    convs = []
    for n in range(count):
        if rng.random() < 0.25:
            messages, listed, answer = no_tool_prompt(rng, items)
            messages.append({"role": "assistant", "content": answer})
        else:
            messages, listed, target, slots = tool_prompt(rng, parity)
            call_id = f"call_{n:06d}"
            result = target.result(rng, slots)
            call = {"id": call_id, "type": "function", "function": {"name": target.name, "arguments": slots}}
            messages += [
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call_id, "name": target.name, "content": json.dumps(result)},
                {"role": "assistant", "content": target.answer.format(**slots, **result)},
            ]
        convs.append({"messages": messages, "tools": _tools(listed)})
    return convs


def eval_prompts(calls: int, texts: int, seed: int = 0) -> list[dict[str, Any]]:
    """Held-out prompts (slot values never trained on): `calls` that one listed
    tool fits (`expect`: its name) and `texts` that none fits (`expect`: None)."""
    rng = random.Random(f"tools-eval-{seed}")
    items = _api_items()
    out = []
    for _ in range(calls):
        messages, listed, target, _ = tool_prompt(rng, parity=1)
        out.append({"messages": messages, "tools": _tools(listed), "expect": target.name})
    for _ in range(texts):
        messages, listed, _ = no_tool_prompt(rng, items)
        out.append({"messages": messages, "tools": _tools(listed), "expect": None})
    return out
