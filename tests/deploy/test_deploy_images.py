"""The Dockerfiles and their entrypoint: hadolint and shellcheck pass, ports,
health check, user and exec form agree with the server, every COPY source is in
the build context, and the entrypoint really fetches the model and execs the
server (run here with stub `lemur` and `hf` commands; no Docker engine needed)."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.deploy import (
    DOCKERFILES,
    ENTRYPOINT,
    K8S_DIR,
    REPO,
    default_port,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
    final_stage,
    load_yaml,
)

VENV_BIN = str(Path(sys.executable).parent)


def tool(name: str) -> str:
    path = shutil.which(name, path=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    if path is None:
        pytest.skip(f"{name} is not installed (the dev extra brings it)")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    # With shellcheck on PATH, hadolint also checks the shell in RUN instructions.
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python -m lemur serve\n")
    out = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3007" in out.stdout


def test_shellcheck_passes_on_the_entrypoint() -> None:
    out = subprocess.run([tool("shellcheck"), "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n") and os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_matches_the_server(dockerfile: Path) -> None:
    stage = final_stage(dockerfile_instructions(dockerfile))
    by_kw = {ins.keyword: ins.value for ins in stage}
    port = default_port()
    env = dockerfile_env(stage)
    assert by_kw["EXPOSE"] == str(port) and env["LEMUR_PORT"] == str(port)
    assert env["LEMUR_HOST"] == "0.0.0.0", "the server binds to loopback by default; a container must not"
    user = by_kw["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), "numeric non-root USER (runAsNonRoot needs it)"
    # Exec forms: SIGTERM reaches tini, which forwards it to the server (exec'd by the entrypoint).
    entrypoint = exec_form(by_kw["ENTRYPOINT"])
    assert entrypoint[0].endswith("tini") and entrypoint[-1] == "lemur-entrypoint"
    assert exec_form(by_kw["CMD"])[0] == "serve"
    healthcheck = by_kw["HEALTHCHECK"]
    assert "--start-period=" in healthcheck
    assert exec_form(healthcheck.split("CMD", 1)[1].strip()) == ["lemur-entrypoint", "healthcheck"]
    # HOME holds every cache; Kubernetes mounts a writable emptyDir exactly there.
    deployment = load_yaml(K8S_DIR / "base" / "deployment.yaml")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert env["HOME"] in {m["mountPath"] for m in c["volumeMounts"]}
    assert env["HF_HOME"].startswith(env["HOME"]) and env["LEMUR_CACHE"].startswith(env["HOME"])


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(c, pat) for c in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(dockerfile: Path) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert _dockerignored(".venv/bin/python", patterns) and _dockerignored("models/x/config.json", patterns)
    copies = [ins.value.split() for ins in dockerfile_instructions(dockerfile) if ins.keyword == "COPY"]
    sources = [src for args in copies if not any(a.startswith("--from") for a in args)
               for src in [a for a in args if not a.startswith("--")][:-1]]  # fmt: skip
    assert {"lemur", "server", "kernels", "training", "loadtest"} <= set(sources)
    assert "deploy/docker/entrypoint.sh" in sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert not _dockerignored(src.removeprefix("./"), patterns), f"{src} is excluded by .dockerignore"


def test_package_data_ships_the_training_presets() -> None:
    """The images install the package (not editable): non-Python files must be package data."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: package for package, folder in config["package-dir"].items()}
    tracked = subprocess.run(["git", "ls-files", *folders], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    data_files = [f for f in tracked if not f.endswith(".py")]
    assert any(f.startswith("training/presets/") for f in data_files), "expected the training presets"
    for f in data_files:
        folder, _, rest = f.partition("/")
        patterns = config["package-data"].get(folders[folder], [])
        assert any(fnmatch.fnmatch(rest, g) for g in patterns), f"{f} is not package data"


# ---- the entrypoint, run with stub commands ---------------------------------------------------------

STUB_LEMUR = """#!/bin/sh
{ echo "pid=$$"; for a in "$@"; do echo "arg=$a"; done; } > "$STUB_OUT/lemur"
"""
STUB_HF = """#!/bin/sh
{ for a in "$@"; do echo "arg=$a"; done; echo "token=${HF_TOKEN:-}"; } > "$STUB_OUT/hf"
[ -z "${STUB_HF_FAIL:-}" ] || exit 1
while [ "$#" -gt 0 ]; do [ "$1" = --local-dir ] && dir="$2"; shift; done
mkdir -p "$dir" && echo '{}' > "$dir/config.json"
"""


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    for name, text in (("lemur", STUB_LEMUR), ("hf", STUB_HF)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_OUT": str(out), "HOME": str(tmp_path)}


def run_entrypoint(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    proc = subprocess.Popen(["sh", str(ENTRYPOINT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    stdout, stderr = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), proc.pid


def stub_lines(env: dict[str, str], name: str) -> list[str]:
    return (Path(env["STUB_OUT"]) / name).read_text().splitlines()


def test_entrypoint_execs_the_server_on_a_mounted_model(stubs: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "models" / "lemur-tiny-chat"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    env = {**stubs, "LEMUR_MODEL_DIR": str(model), "LEMUR_HOST": "0.0.0.0", "LEMUR_PORT": str(default_port())}
    done, pid = run_entrypoint(env, "--enforce-eager")
    assert done.returncode == 0, done.stderr
    lines = stub_lines(env, "lemur")
    # exec: the server replaced the shell (same process), so it gets SIGTERM directly.
    assert lines[0] == f"pid={pid}"
    args = [line.removeprefix("arg=") for line in lines[1:]]
    assert args == ["serve", str(model), "--host", "0.0.0.0", "--port", str(default_port()), "--enforce-eager"]
    assert not (Path(env["STUB_OUT"]) / "hf").exists(), "a mounted model is never downloaded"


def test_entrypoint_downloads_with_the_token_file_then_serves(stubs: dict[str, str], tmp_path: Path) -> None:
    token = tmp_path / "hf_token"
    token.write_text("hf_secret_value\n")
    model = tmp_path / "models" / "lemur-70b-chat-v1"
    env = {**stubs, "LEMUR_MODEL_DIR": str(model), "LEMUR_MODEL_REPO": "OpenLemur/lemur-70b-chat-v1",
           "LEMUR_MODEL_REVISION": "main", "HF_TOKEN_FILE": str(token)}  # fmt: skip
    done, _ = run_entrypoint(env, "fetch")
    assert done.returncode == 0, done.stderr
    hf = stub_lines(env, "hf")
    assert hf[:5] == ["arg=download", "arg=OpenLemur/lemur-70b-chat-v1", "arg=--local-dir", f"arg={model}",
                      "arg=--revision"] and hf[-1] == "token=hf_secret_value"  # fmt: skip
    assert "hf_secret_value" not in done.stderr + done.stdout, "the token is never printed"
    assert (model / ".lemur-download-complete").read_text() == "OpenLemur/lemur-70b-chat-v1@main\n"
    assert not (Path(env["STUB_OUT"]) / "lemur").exists(), "fetch only fetches"
    # A second start finds the complete download, even offline.
    (Path(env["STUB_OUT"]) / "hf").unlink()
    done, _ = run_entrypoint({**env, "HF_HUB_OFFLINE": "1"}, "serve")
    assert done.returncode == 0 and not (Path(env["STUB_OUT"]) / "hf").exists()
    assert stub_lines(env, "lemur")[1:3] == ["arg=serve", f"arg={model}"]


def test_entrypoint_refuses_what_it_cannot_do(stubs: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "models" / "missing"
    done, _ = run_entrypoint({**stubs, "LEMUR_MODEL_DIR": str(empty)})
    assert done.returncode != 0 and "no model in" in done.stderr
    # Offline with a half-finished download (config.json but no marker): no download, no serving.
    empty.mkdir(parents=True)
    (empty / "config.json").write_text("{}")
    env = {**stubs, "LEMUR_MODEL_DIR": str(empty), "LEMUR_MODEL_REPO": "OpenLemur/x", "HF_HUB_OFFLINE": "1"}
    done, _ = run_entrypoint(env)
    assert done.returncode != 0 and "HF_HUB_OFFLINE" in done.stderr
    assert not (Path(stubs["STUB_OUT"]) / "hf").exists() and not (Path(stubs["STUB_OUT"]) / "lemur").exists()


def test_entrypoint_downloads_again_for_a_new_revision_and_keeps_no_marker_on_failure(
    stubs: dict[str, str], tmp_path: Path
) -> None:
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / ".lemur-download-complete").write_text("OpenLemur/m@v1\n")
    env = {**stubs, "LEMUR_MODEL_DIR": str(model), "LEMUR_MODEL_REPO": "OpenLemur/m"}
    done, _ = run_entrypoint({**env, "LEMUR_MODEL_REVISION": "v1"}, "fetch")
    assert done.returncode == 0 and not (Path(env["STUB_OUT"]) / "hf").exists(), "same revision: no download"
    done, _ = run_entrypoint({**env, "LEMUR_MODEL_REVISION": "v2", "STUB_HF_FAIL": "1"}, "fetch")
    assert done.returncode != 0 and "download of OpenLemur/m@v2 failed" in done.stderr
    assert "arg=v2" in stub_lines(env, "hf")
    assert not (model / ".lemur-download-complete").exists(), "a failed download leaves no marker"
    done, _ = run_entrypoint({**env, "LEMUR_MODEL_REVISION": "v2"}, "fetch")
    assert done.returncode == 0 and (model / ".lemur-download-complete").read_text() == "OpenLemur/m@v2\n"


def test_entrypoint_explains_an_unwritable_model_volume(stubs: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("a file where the volume's directory should be")
    env = {**stubs, "LEMUR_MODEL_DIR": str(blocker / "m"), "LEMUR_MODEL_REPO": "OpenLemur/m"}
    done, _ = run_entrypoint(env, "fetch")
    assert done.returncode != 0 and "cannot write" in done.stderr and "Model storage" in done.stderr
    assert not (Path(env["STUB_OUT"]) / "hf").exists()
