"""`lemur`: the command line of Lemur Serve.

- `lemur serve [MODEL] [gateway flags] [any vLLM engine flag]`: with no MODEL,
  the trained tiny chat model, trained on first use and cached under
  $LEMUR_CACHE (default ~/.cache/lemur).
- `lemur train {recipe,pretrain,sft,export} ...`: Lemur's training recipe.
- `lemur init-model [--out DIR]`: the tiny untrained checkpoint (tests, demos).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from server.config import DEFAULT_HOST, DEFAULT_PORT, GatewayConfig

DEFAULT_MODEL_NAME = "lemur-tiny-chat"


def lemur_cache() -> Path:
    return Path(os.environ.get("LEMUR_CACHE", Path.home() / ".cache" / "lemur"))


def default_model_dir() -> Path:
    return lemur_cache() / "models" / DEFAULT_MODEL_NAME


def ensure_default_model(path: Path) -> None:
    """The default model is trained on first use (the tiny preset, about ten
    minutes on two cores, with a progress bar) and cached."""
    if (path / "config.json").exists():
        return
    print(f"{DEFAULT_MODEL_NAME} is not cached yet: training it once (lemur train recipe --preset tiny) ...")
    from training.cli import main as train_main

    run_dir = lemur_cache() / "runs" / "tiny"
    train_main(["recipe", "--preset", "tiny", "--out", str(run_dir), "--export-to", str(path)])


def add_gateway_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("gateway")
    g.add_argument("model_tag", nargs="?", default=None, help="model directory or Hub id (same as --model)")
    g.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to bind (default %(default)s)")
    g.add_argument("--api-key", default=None, help="require this key as 'Authorization: Bearer <key>'")
    g.add_argument(
        "--chat-template",
        default=None,
        help="Jinja chat template (file or inline); default: the checkpoint's, else Lemur's ChatML",
    )
    g.add_argument("--no-warmup", action="store_true", help="be ready without serving a warm-up request")
    g.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=256,
        help="generation requests running at once (default %(default)s)",
    )
    g.add_argument(
        "--max-queued-requests",
        type=int,
        default=1024,
        help="requests waiting for a slot; beyond: 429 (default %(default)s)",
    )
    g.add_argument(
        "--queue-timeout",
        type=float,
        default=30.0,
        help="seconds a request may wait for a slot before a 429 (default %(default)s)",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="deadline of a request in seconds; past it the request is aborted (default: none)",
    )


def serve(argv: list[str]) -> int:
    # Only the engine adapter imports vllm; its parser carries every vLLM flag.
    from server.engine import vllm_engine

    parser = vllm_engine.make_parser("lemur serve", "Serve a model with an OpenAI-compatible API.")
    add_gateway_args(parser)
    # vLLM already has --shutdown-timeout (its engine's own wait); the gateway
    # drains for the same time, so one flag governs both. Our default: 30 s.
    parser.set_defaults(model=None, shutdown_timeout=30.0)
    ns = parser.parse_args(argv)
    if ns.model_tag:
        ns.model = ns.model_tag
    if ns.model is None:
        ensure_default_model(default_model_dir())
        ns.model = str(default_model_dir())
    model_dir = Path(ns.model)
    if not ns.served_model_name and model_dir.is_dir():
        ns.served_model_name = [model_dir.resolve().name]
    # vLLM owns --log-level (it is a shortcut for its logging config); we follow it.
    log_level = str(getattr(ns, "log_level", "INFO")).upper()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from server.app import create_app
    from server.lifecycle import GatewayServer

    engine_args = vllm_engine.engine_args_from_namespace(ns)
    config = GatewayConfig(
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key,
        chat_template=ns.chat_template,
        served_model_names=tuple(ns.served_model_name or ()),
        log_level=log_level.lower(),
        warmup=not ns.no_warmup,
        max_concurrent_requests=ns.max_concurrent_requests,
        max_queued_requests=ns.max_queued_requests,
        queue_timeout=ns.queue_timeout,
        request_timeout=ns.request_timeout,
        shutdown_timeout=float(ns.shutdown_timeout),
    )
    server: GatewayServer | None = None

    def engine_dead() -> None:
        if server is not None:
            server.stop(exit_code=1)

    app = create_app(
        config,
        lambda: vllm_engine.VllmEngine.start(engine_args),
        engine_version=vllm_engine.VLLM_VERSION,
        on_engine_dead=engine_dead,
    )
    uv_config = uvicorn.Config(
        app, host=ns.host, port=ns.port, log_level=config.log_level, timeout_keep_alive=30, timeout_graceful_shutdown=5
    )
    server = GatewayServer(uv_config, shutdown_timeout=config.shutdown_timeout)
    server.run()
    return server.exit_code


def train(argv: list[str]) -> int:
    from training.cli import main

    return main(argv)


def init_model(argv: list[str]) -> int:
    from training.tiny import main

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "serve": (serve, "serve a model behind the OpenAI-compatible gateway"),
    "train": (train, "Lemur's training recipe: pretrain, sft, export, recipe"),
    "init-model": (init_model, "build the tiny untrained Lemur-format demo checkpoint"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: lemur COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
