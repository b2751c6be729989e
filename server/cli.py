"""`lemur`: the command line of Lemur Serve.

- `lemur serve [MODEL] [gateway flags] [any vLLM engine flag]`: with no MODEL,
  the trained tiny chat model, trained on first use and cached under
  $LEMUR_CACHE (default ~/.cache/lemur).
- `lemur train {recipe,pretrain,sft,export} ...`: Lemur's training recipe.
- `lemur init-model [--out DIR]`: the tiny untrained checkpoint (tests, demos).
- `lemur plan [MODEL] --gpu GPU --tensor-parallel-size N ...`: sizing arithmetic
  for a vLLM deployment (server/plan.py).
- `lemur env [--model MODEL] [--json]`: the environment, for bug reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from server.auth import ENV_VAR as KEYS_ENV_VAR
from server.auth import KeyStore, is_loopback
from server.config import DEFAULT_HOST, DEFAULT_PORT, HTTP_CLOSE_GRACE_S, GatewayConfig
from server.cpu import cpu_model, request_amx_permission
from server.logs import setup_logging

DEFAULT_MODEL_NAME = "lemur-tiny-chat"
LORA_ADMIN_KEY_ENV = "LEMUR_LORA_ADMIN_KEY"
# Adapters that may share a batch when --max-loras is not given (vLLM's own default is 1).
DEFAULT_MAX_LORAS = 4


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
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without API keys (by default that refuses to start)",
    )
    g.add_argument(
        "--chat-template",
        default=None,
        help="Jinja chat template (file or inline); default: the checkpoint's, else Lemur's ChatML",
    )
    g.add_argument(
        "--api-keys-file",
        type=Path,
        default=None,
        help="hashed API keys, one per line: 'sha256:<hex> [name] [rpm=N] [tpm=N]' (see `lemur hash-key`)",
    )
    g.add_argument("--rate-limit-rpm", type=float, default=None, help="default requests per minute per key")
    g.add_argument("--rate-limit-tpm", type=float, default=None, help="default tokens per minute per key")
    g.add_argument("--metrics-require-key", action="store_true", help="protect /metrics with the API keys too")
    g.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics on this port instead of the API port (it shows API key names)",
    )
    g.add_argument(
        "--shared-prefix-cache",
        action="store_true",
        help="one prefix cache for all API keys (by default each key has its own: no cross-key timing of prompts)",
    )
    g.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="largest request body (default 4 MiB)")
    g.add_argument("--log-format", choices=["json", "text"], default="json", help="log format (default json)")
    g.add_argument("--log-prompts", action="store_true", help="also log prompts and outputs (off by default)")
    g.add_argument(
        "--engine",
        choices=["vllm", "mock"],
        default="vllm",
        help="vllm (default), or mock: no model, tokens at a fixed rate, to load-test the gateway alone",
    )
    g.add_argument(
        "--kernels",
        choices=["vllm", "triton"],
        default=None,
        help="vllm: vLLM's own ops (default); triton: Lemur's Triton RMSNorm, SiLU-and-mul, rotary and the "
        "LEMUR attention backend (on CPU it replaces CPU_ATTN; on CUDA add --attention-backend CUSTOM). "
        "Torch twins on a CPU without TRITON_INTERPRET=1. Same as env LEMUR_KERNELS.",
    )
    g.add_argument("--mock-tokens-per-s", type=float, default=50.0, help="mock engine: tokens/s per sequence")
    g.add_argument("--mock-ttft-ms", type=float, default=0.0, help="mock engine: time to the first token")
    g.add_argument("--no-warmup", action="store_true", help="be ready without serving a warm-up request")
    g.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=256,
        help="sequences running at once: a request counts n x prompts (default %(default)s)",
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
        "--max-sequences-per-request",
        type=int,
        default=64,
        help="most sequences (n x prompts) one request may ask for; beyond: 400 (default %(default)s)",
    )
    g.add_argument(
        "--max-tokens-limit",
        type=int,
        default=4096,
        help="most max_tokens per sequence, and the cap of the default when a request omits it (default %(default)s)",
    )
    g.add_argument(
        "--max-echo-logprob-tokens",
        type=int,
        default=8192,
        help="most prompt-token logprobs (prompt tokens x n) an echo+logprobs request returns (default %(default)s)",
    )
    g.add_argument(
        "--stream-write-timeout",
        type=float,
        default=30.0,
        help="cut a stream whose client reads nothing for this many seconds, freeing its slot (default %(default)s)",
    )
    g.add_argument(
        "--read-deadline",
        type=float,
        default=30.0,
        help="seconds a connection has to send each whole request, headers and body (default %(default)s)",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=2048,
        help="open connections at once; beyond: 503 (default %(default)s)",
    )
    g.add_argument(
        "--no-playground",
        action="store_true",
        help="do not serve the chat page at / and /playground (it is static and calls the API with the user's key)",
    )
    g.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="LoRA adapters (PEFT directories) to serve beside the base, chosen by a request's `model`; "
        "implies --enable-lora",
    )
    g.add_argument(
        "--lora-admin-key",
        default=os.environ.get(LORA_ADMIN_KEY_ENV),
        help="turn on POST /v1/load_lora_adapter and /v1/unload_lora_adapter, guarded by this key (no user "
        f"key works there); implies --enable-lora. Default: env {LORA_ADMIN_KEY_ENV}; off when unset",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="deadline of a request in seconds; past it the request is aborted (default: none)",
    )


RAY_ENV_VARS = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"


def select_kernels(argv: list[str]) -> None:
    """`--kernels` goes into the environment before vllm is imported: vLLM loads
    its plugins (ours reads LEMUR_KERNELS) as soon as it builds its parser, and
    every engine process inherits the variable. A bad value stops here."""
    from kernels.vllm_plugin import CHOICES, ENV_VAR, requested

    pre = argparse.ArgumentParser(prog="lemur serve", add_help=False)
    pre.add_argument("--kernels", choices=CHOICES, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.kernels is not None:
        os.environ[ENV_VAR] = known.kernels
    try:
        requested()
    except ValueError as e:
        pre.error(str(e))
    # Ray workers (multi-node) get only the variables vLLM lists; without ours
    # there, the plugin would stay off in them and CUSTOM would be unregistered.
    ray_vars = {v for v in os.environ.get(RAY_ENV_VARS, "").split(",") if v}
    os.environ[RAY_ENV_VARS] = ",".join(sorted(ray_vars | {ENV_VAR}))


def lora_modules(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """--lora-modules as (name, path) pairs; with any adapter (or the admin
    key) the engine starts with LoRA on, by default up to DEFAULT_MAX_LORAS
    adapters in one batch."""
    modules: list[tuple[str, str]] = []
    for item in ns.lora_modules:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--lora-modules takes NAME=PATH, not {item!r}")
        if name in dict(modules):
            parser.error(f"--lora-modules names {name!r} twice")
        modules.append((name, path))
    if modules or ns.lora_admin_key:
        ns.enable_lora = True
        if ns.max_loras is None:
            ns.max_loras = max(1, min(DEFAULT_MAX_LORAS, len(modules)))
    if ns.max_loras is None:
        ns.max_loras = 1  # vLLM's default
    return tuple(modules)


def serve(argv: list[str]) -> int:
    select_kernels(argv)
    # Only the engine adapter imports vllm; its parser carries every vLLM flag.
    from server.engine import vllm_engine

    parser = vllm_engine.make_parser("lemur serve", "Serve a model with an OpenAI-compatible API.")
    add_gateway_args(parser)
    # vLLM already has --shutdown-timeout (its engine's own wait); the gateway
    # drains for the same time, so one flag governs both. Our default: 30 s.
    parser.set_defaults(model=None, shutdown_timeout=30.0, max_loras=None)
    ns = parser.parse_args(argv)
    adapters = lora_modules(parser, ns)
    try:  # bad keys stop here, before the engine loads
        keys = KeyStore.from_sources(ns.api_key, ns.api_keys_file)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if ns.lora_admin_key and keys.authenticate(ns.lora_admin_key) is not None:
        parser.error("--lora-admin-key must differ from every API key: it loads code-adjacent files on the server")
    if not keys.enabled and not is_loopback(ns.host):
        if not ns.allow_unauthenticated:
            parser.error(
                f"refusing to serve on {ns.host} without API keys: give --api-key, --api-keys-file or "
                f"{KEYS_ENV_VAR}, or --allow-unauthenticated if something in front of this server authenticates"
            )
        print(f"WARNING: serving on {ns.host} with no API keys (--allow-unauthenticated)", file=sys.stderr)
    from server.lifecycle import reserve_address

    try:  # before the model is trained, downloaded or loaded: a taken port fails now
        listen_socket = reserve_address(ns.host, ns.port)
    except OSError as exc:
        parser.error(f"cannot listen on {ns.host}:{ns.port}: {exc.strerror or exc}")
    if ns.chat_template is not None:
        from server.chat_template import load_template_arg

        try:
            load_template_arg(ns.chat_template)  # fail before the engine loads, not after
        except OSError as exc:
            parser.error(str(exc))
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
    setup_logging(log_level, ns.log_format)
    # The engine processes ask for themselves (server/engine/vllm_hooks.py); this is the gateway's own.
    logging.getLogger("lemur.cli").info("CPU %s; AMX %s", cpu_model(), request_amx_permission())

    import uvicorn

    from server.app import create_app
    from server.engine import Engine
    from server.lifecycle import GatewayServer
    from server.transport import read_deadline_protocol

    engine_args = vllm_engine.engine_args_from_namespace(ns)
    config = GatewayConfig(
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key,
        api_keys_file=ns.api_keys_file,
        rate_limit_rpm=ns.rate_limit_rpm,
        rate_limit_tpm=ns.rate_limit_tpm,
        metrics_require_key=ns.metrics_require_key,
        metrics_port=ns.metrics_port,
        log_prompts=ns.log_prompts,
        max_body_bytes=ns.max_body_bytes,
        chat_template=ns.chat_template,
        served_model_names=tuple(ns.served_model_name or ()),
        log_level=log_level.lower(),
        warmup=not ns.no_warmup,
        max_concurrent_requests=ns.max_concurrent_requests,
        max_queued_requests=ns.max_queued_requests,
        queue_timeout=ns.queue_timeout,
        request_timeout=ns.request_timeout,
        shutdown_timeout=float(ns.shutdown_timeout),
        shared_prefix_cache=ns.shared_prefix_cache,
        max_sequences_per_request=ns.max_sequences_per_request,
        max_tokens_limit=ns.max_tokens_limit,
        max_echo_logprob_tokens=ns.max_echo_logprob_tokens,
        stream_write_timeout=ns.stream_write_timeout,
        read_deadline=ns.read_deadline,
        max_connections=ns.max_connections,
        lora_modules=adapters,
        lora_admin_key=ns.lora_admin_key or None,
        playground=not ns.no_playground,
    )
    server: GatewayServer | None = None

    def engine_dead() -> None:
        if server is not None:
            server.stop(exit_code=1)

    if ns.engine == "mock":
        from server.engine.mock import MockEngine

        def factory() -> Engine:
            return MockEngine(ns.model, config.served_model_names[0] if config.served_model_names else "mock",
                              ns.mock_tokens_per_s, ns.mock_ttft_ms / 1000, ns.max_model_len)  # fmt: skip
    else:

        def factory() -> Engine:
            return vllm_engine.VllmEngine.start(engine_args)

    app = create_app(config, factory, engine_version=vllm_engine.VLLM_VERSION, on_engine_dead=engine_dead)
    uv_config = uvicorn.Config(
        app,
        host=ns.host,
        port=ns.port,
        log_level=config.log_level,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=HTTP_CLOSE_GRACE_S,
        http=read_deadline_protocol(config.read_deadline),
        limit_concurrency=config.max_connections,
    )
    server = GatewayServer(uv_config, shutdown_timeout=config.shutdown_timeout)
    server.run(sockets=[listen_socket])
    return server.exit_code


def hash_key(argv: list[str]) -> int:
    """Read an API key on stdin, print its keys-file line (the key is not stored)."""
    parser = argparse.ArgumentParser(prog="lemur hash-key", description=hash_key.__doc__)
    parser.add_argument("name", help="a name for the key (shown in logs and metrics)")
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--tpm", type=float, default=None)
    args = parser.parse_args(argv)
    from server.auth import hash_line

    key = sys.stdin.readline().strip()
    if not key:
        parser.error("no key on stdin")
    limits = "".join(f" {k}={v:g}" for k, v in (("rpm", args.rpm), ("tpm", args.tpm)) if v is not None)
    print(hash_line(key, args.name) + limits)
    return 0


def bench(argv: list[str]) -> int:
    from bench.cli import main

    return main(argv)


def train(argv: list[str]) -> int:
    from training.cli import main

    return main(argv)


def init_model(argv: list[str]) -> int:
    from training.tiny import main

    return main(argv)


def plan(argv: list[str]) -> int:
    from server.plan import main

    return main(argv)


def env(argv: list[str]) -> int:
    from server.env_report import main

    return main(argv, default_model=default_model_dir())


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "serve": (serve, "serve a model behind the OpenAI-compatible gateway"),
    "bench": (bench, "load-test an OpenAI-compatible endpoint (and `bench compare A.json B.json`)"),
    "train": (train, "Lemur's training recipe: pretrain, sft, export, recipe"),
    "hash-key": (hash_key, "print the keys-file line of an API key read on stdin"),
    "init-model": (init_model, "build the tiny untrained Lemur-format demo checkpoint"),
    "plan": (plan, "size a deployment: weights and KV cache per GPU, capacity, decode lower bound"),
    "env": (env, "print the machine, packages, CPU/AMX, GPUs and serving defaults for a bug report"),
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
