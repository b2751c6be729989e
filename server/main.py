"""`lemur serve`, step by step: flags, checks that need no model, the model,
the engine's LoRA settings, logging, then the engine and the HTTP server.

Every check that can fail without a model runs before the model is trained,
downloaded or loaded: bad keys, a taken port, an unreadable chat template.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lemur.hardware.cpu import cpu_model, request_amx_permission
from lemur.kernels.vllm_plugin import CHOICES as KERNEL_CHOICES
from lemur.kernels.vllm_plugin import ENV_VAR as KERNELS_ENV_VAR
from lemur.kernels.vllm_plugin import requested as requested_kernels
from lemur.server.auth import ENV_VAR as KEYS_ENV_VAR
from lemur.server.auth import KeyStore, is_loopback
from lemur.server.config import ENGINE, GROUPS, HTTP_CLOSE_GRACE_S, KEYS, MODEL, GatewayConfig
from lemur.server.engine import Engine
from lemur.server.flags import GROUP_PREFIX, add_flags, flag, from_args
from lemur.server.logs import setup_logging

# Adapters that may share a batch when --max-loras is not given (vLLM's own default is 1).
DEFAULT_MAX_LORAS = 4
RAY_ENV_VARS = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"
EngineFactory = Callable[[], Engine]
USAGE = "lemur serve [MODEL] [gateway flags] [vLLM engine flags]"


@dataclass(frozen=True)
class LaunchOptions:
    """The flags that choose what starts, not how the gateway serves."""

    model_tag: str | None = flag(
        None,
        "model directory or Hub id (same as --model)",
        MODEL,
        positional=True,
        shown_default="the tiny Lemur-chat model, trained on first use",
    )
    allow_unauthenticated: bool = flag(
        False, "serve a non-loopback --host without API keys (by default that refuses to start)", KEYS
    )
    engine: str = flag(
        "vllm",
        "vllm, or mock: no model and no vLLM, tokens at a fixed rate, to load-test the gateway alone",
        ENGINE,
        choices=("vllm", "mock"),
    )
    kernels: str | None = flag(
        None,
        "vllm: vLLM's own ops; triton: Lemur's Triton RMSNorm, SiLU-and-mul, rotary and the LEMUR "
        "attention backend (on CPU it replaces CPU_ATTN; on CUDA add --attention-backend CUSTOM). Torch twins "
        f"on a CPU without TRITON_INTERPRET=1. Same as env {KERNELS_ENV_VAR}.",
        ENGINE,
        choices=KERNEL_CHOICES,
    )
    headless: bool = flag(
        False,
        "a worker node of a model that spans nodes: the leader's own command line plus --headless and "
        "--node-rank K (K >= 1); it runs this node's ranks, serves no HTTP, and exits 1 once the leader is gone",
        ENGINE,
    )
    mock_tokens_per_s: float = flag(50.0, "mock engine: tokens/s per sequence", ENGINE)
    mock_ttft_ms: float = flag(0.0, "mock engine: time to the first token", ENGINE)


def select_kernels(argv: list[str]) -> None:
    """`--kernels` goes into the environment before vllm is imported: vLLM loads
    its plugins (ours reads LEMUR_KERNELS) as soon as it builds its parser, and
    every engine process inherits the variable. A bad value stops here."""
    pre = argparse.ArgumentParser(prog="lemur serve", add_help=False)
    pre.add_argument("--kernels", choices=KERNEL_CHOICES, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.kernels is not None:
        os.environ[KERNELS_ENV_VAR] = known.kernels
    try:
        requested_kernels()
    except ValueError as e:
        pre.error(str(e))
    # Ray workers (multi-node) get only the variables vLLM lists; without ours
    # there, the plugin would stay off in them and CUSTOM would be unregistered.
    ray_vars = {v for v in os.environ.get(RAY_ENV_VARS, "").split(",") if v}
    os.environ[RAY_ENV_VARS] = ",".join(sorted(ray_vars | {KERNELS_ENV_VAR}))


def add_gateway_flags(parser: argparse.ArgumentParser, positionals: bool = True) -> None:
    add_flags(parser, LaunchOptions, order=GROUPS, positionals=positionals)
    add_flags(parser, GatewayConfig, order=GROUPS)


def build_parser() -> argparse.ArgumentParser:
    """vLLM's engine flags, then ours, declared once on their config fields."""
    # Only the engine adapter imports vllm; its parser carries every vLLM flag.
    from lemur.server.engine import vllm_engine

    parser = vllm_engine.make_parser("lemur serve", "Serve a model with an OpenAI-compatible API.", USAGE)
    add_gateway_flags(parser)
    parser.full_help_groups = [GROUP_PREFIX + name for name in GROUPS]
    parser.set_defaults(model=None, max_loras=None)
    return parser


def build_mock_parser() -> argparse.ArgumentParser:
    """`--engine mock` needs no vLLM: our flags, and the few engine flags the
    gateway and the mock read; any other engine flag is accepted and ignored."""
    parser = argparse.ArgumentParser(prog="lemur serve", usage=USAGE, allow_abbrev=False)
    add_gateway_flags(parser)
    engine = parser.add_argument_group("engine flags the mock engine reads (it ignores the others)")
    engine.add_argument("--model", default=None, help="model directory (its tokenizer and context length)")
    engine.add_argument("--served-model-name", nargs="+", default=None, help="names clients may use in `model`")
    engine.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    engine.add_argument("--shutdown-timeout", type=float, help="seconds to drain on SIGTERM")
    engine.add_argument("--log-level", default=None, help="the log level (DEBUG, INFO, WARNING, ...)")
    parser.set_defaults(max_loras=None)
    return parser


def wants_mock(argv: list[str]) -> bool:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--engine", default="vllm")
    return pre.parse_known_args(argv)[0].engine == "mock"


def wants_headless(argv: list[str]) -> bool:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--headless", action="store_true")
    return pre.parse_known_args(argv)[0].headless


def early_checks(argv: list[str]) -> socket.socket | None:
    """The gateway's own flags read alone, before vLLM is imported (which
    takes seconds): bad keys, an open non-loopback host, a taken port or a
    missing chat template fail at once. Returns the reserved listening socket
    (None for --help, which the full parser answers)."""
    if any(arg in ("-h", "--help") or arg.startswith("--help=") for arg in argv):
        return None
    pre = argparse.ArgumentParser(prog="lemur serve", usage=USAGE, add_help=False, allow_abbrev=False)
    add_gateway_flags(pre, positionals=False)
    ns, _ = pre.parse_known_args(argv)  # vLLM's flags are left for the full parser
    try:
        options, config = from_args(LaunchOptions, ns, model_tag=None), from_args(GatewayConfig, ns)
    except argparse.ArgumentTypeError as exc:
        pre.error(str(exc))
    check_access(pre, config, options)
    check_chat_template(pre, config)
    return reserve_port(pre, config)


def read_flags(
    parser: argparse.ArgumentParser, argv: list[str], known_only: bool = False
) -> tuple[argparse.Namespace, LaunchOptions, GatewayConfig]:
    """The parsed flags, the launch options and the config. `known_only`: flags
    the parser does not know are ignored (the mock engine's vLLM flags)."""
    if known_only:
        ns, ignored = parser.parse_known_args(argv)
        if ignored:
            print(f"mock engine: ignoring {' '.join(ignored)}", file=sys.stderr)
    else:
        ns = parser.parse_args(argv)
    try:
        return ns, from_args(LaunchOptions, ns), from_args(GatewayConfig, ns)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))


def check_access(parser: argparse.ArgumentParser, config: GatewayConfig, options: LaunchOptions) -> None:
    """Keys that load, an admin key apart from the user keys, and no open
    server off loopback unless asked for."""
    try:
        keys = KeyStore.from_sources(config.api_key, config.api_keys_file)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if config.lora_admin_key and keys.authenticate(config.lora_admin_key) is not None:
        parser.error("--lora-admin-key must differ from every API key: it loads code-adjacent files on the server")
    if keys.enabled or is_loopback(config.host):
        return
    if not options.allow_unauthenticated:
        parser.error(
            f"refusing to serve on {config.host} without API keys: give --api-key, --api-keys-file or "
            f"{KEYS_ENV_VAR}, or --allow-unauthenticated if something in front of this server authenticates"
        )
    print(f"WARNING: serving on {config.host} with no API keys (--allow-unauthenticated)", file=sys.stderr)


def reserve_port(parser: argparse.ArgumentParser, config: GatewayConfig) -> socket.socket:
    """Before the model is trained, downloaded or loaded: a taken port fails now."""
    from lemur.server.lifecycle import reserve_address

    try:
        return reserve_address(config.host, config.port)
    except OSError as exc:
        parser.error(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")


def check_chat_template(parser: argparse.ArgumentParser, config: GatewayConfig) -> None:
    if config.chat_template is None:
        return
    from lemur.server.chat_template import load_template_arg

    try:
        load_template_arg(config.chat_template)  # fail before the engine loads, not after
    except OSError as exc:
        parser.error(str(exc))


def resolve_model(ns: argparse.Namespace, options: LaunchOptions, default_model: Callable[[], Path]) -> tuple[str, ...]:
    """The model the engine loads (the positional, --model, or the default,
    trained on first use) and the names it is served under."""
    if options.model_tag:
        ns.model = options.model_tag
    if ns.model is None:
        ns.model = str(default_model())
    model_dir = Path(ns.model)
    if not ns.served_model_name and model_dir.is_dir():
        ns.served_model_name = [model_dir.resolve().name]
    return tuple(ns.served_model_name or ())


def enable_lora(ns: argparse.Namespace, config: GatewayConfig) -> None:
    """With any adapter (or the admin key) the engine starts with LoRA on, by
    default up to DEFAULT_MAX_LORAS adapters in one batch."""
    if config.lora_modules or config.lora_admin_key:
        ns.enable_lora = True
        if ns.max_loras is None:
            ns.max_loras = max(1, min(DEFAULT_MAX_LORAS, len(config.lora_modules)))
    if ns.max_loras is None:
        ns.max_loras = 1  # vLLM's default


def serve(argv: list[str], default_model: Callable[[], Path]) -> int:
    select_kernels(argv)
    if wants_headless(argv):
        return serve_headless(argv, default_model)
    listen_socket = early_checks(argv)
    mock = wants_mock(argv)
    parser = build_mock_parser() if mock else build_parser()
    ns, options, config = read_flags(parser, argv, known_only=mock)
    if listen_socket is None:
        listen_socket = reserve_port(parser, config)
    config = dataclasses.replace(config, served_model_names=resolve_model(ns, options, default_model))
    enable_lora(ns, config)
    setup_logging(config.log_level.upper(), config.log_format)
    # The engine processes ask for themselves (server/engine/vllm_hooks.py); this is the gateway's own.
    logging.getLogger("lemur.cli").info("CPU %s; AMX %s", cpu_model(), request_amx_permission())
    return run(config, options, ns, listen_socket)


def serve_headless(argv: list[str], default_model: Callable[[], Path]) -> int:
    """A worker node: the same parser and flags as the leader (so LoRA, dtype
    and parallel sizes cannot differ), no HTTP port and no keys to check;
    only this node's engine ranks, until the leader is gone."""
    parser = build_parser()
    ns, options, config = read_flags(parser, argv)
    if options.engine != "vllm":
        parser.error("--headless runs vLLM's ranks on this node: not with --engine mock")
    if ns.nnodes < 2 or ns.node_rank < 1:
        parser.error("--headless is a worker node: give --nnodes 2 or more and --node-rank 1 or more")
    resolve_model(ns, options, default_model)
    enable_lora(ns, config)
    setup_logging(config.log_level.upper(), config.log_format)
    from lemur.server.engine import vllm_engine, vllm_node

    return vllm_node.run_worker_node(vllm_engine.engine_args_from_namespace(ns))


def engine_factory(config: GatewayConfig, options: LaunchOptions, ns: argparse.Namespace) -> tuple[EngineFactory, str]:
    """How to start the engine (called once the app starts), and its version for /version."""
    if options.engine == "mock":
        from lemur.server.engine.mock import MockEngine

        name = config.served_model_names[0] if config.served_model_names else "mock"
        rate, ttft_s = options.mock_tokens_per_s, options.mock_ttft_ms / 1000
        return (lambda: MockEngine(ns.model, name, rate, ttft_s, ns.max_model_len)), "none (mock engine)"
    from lemur.server.engine import vllm_engine

    engine_args = vllm_engine.engine_args_from_namespace(ns)
    return (lambda: vllm_engine.VllmEngine.start(engine_args)), vllm_engine.VLLM_VERSION


def run(config: GatewayConfig, options: LaunchOptions, ns: argparse.Namespace, listen_socket: socket.socket) -> int:
    """The engine behind the app behind uvicorn, until a drain or the engine's death."""
    import uvicorn

    from lemur.server.app import create_app
    from lemur.server.lifecycle import GatewayServer
    from lemur.server.transport import read_deadline_protocol

    factory, engine_version = engine_factory(config, options, ns)
    server: GatewayServer | None = None

    def engine_dead() -> None:
        if server is not None:
            server.stop(exit_code=1)

    app = create_app(config, factory, engine_version=engine_version, on_engine_dead=engine_dead)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,  # our middleware writes the access line (with the request id); uvicorn's repeated it
        timeout_keep_alive=30,
        timeout_graceful_shutdown=HTTP_CLOSE_GRACE_S,
        http=read_deadline_protocol(config.read_deadline),
        limit_concurrency=config.max_connections,
    )
    server = GatewayServer(uv_config, shutdown_timeout=config.shutdown_timeout)
    server.run(sockets=[listen_socket])
    return server.exit_code
