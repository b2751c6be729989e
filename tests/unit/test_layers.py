"""The floor plan is a contract (pyproject's [tool.importlinter]): no layer
imports a layer above it, siblings do not import each other, and only the
engine adapter and the kernels' vLLM glue import vllm.

import-linter finds modules by walking a package's folder, and `lemur`'s
wings live in folders of their own (pyproject's package-dir), so the test
lays the package out as it is installed, in a temporary folder, and runs
`lint-imports` on that copy.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.support.layout import lay_out

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [str(LINT_IMPORTS), "--no-cache", str(REPO / "pyproject.toml")]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_the_floor_plan(tmp_path: Path) -> None:
    out = lint_imports(lay_out(REPO, tmp_path))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in out.stdout


def broken(tmp_path: Path, added: dict[str, str]) -> str:
    """lint-imports' report on the laid-out tree plus `added` modules (path under lemur/: source); it must fail."""
    root = lay_out(REPO, tmp_path)
    for name, source in added.items():
        (root / "lemur" / name).write_text(source)
    out = lint_imports(root)
    assert out.returncode == 1, out.stdout[-4000:]
    return out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """A kernel module that imports the gateway, and a gateway module that imports the command."""
    report = broken(tmp_path, {"kernels/upward.py": "from lemur.server import config\n",
                               "server/upward.py": "def f():\n    import lemur.cli\n"})  # fmt: skip
    assert "Contracts: 2 kept, 1 broken." in report
    assert "lemur.kernels.upward -> lemur.server.config" in report
    assert "lemur.server.upward -> lemur.cli" in report


def test_a_sibling_import_and_a_stray_vllm_import_break_it(tmp_path: Path) -> None:
    report = broken(tmp_path, {"training/sideways.py": "from lemur.server import errors\n",
                               "server/routes_vllm.py": "import vllm\n"})  # fmt: skip
    assert "Contracts: 1 kept, 2 broken." in report
    assert "lemur.training.sideways -> lemur.server.errors" in report
    assert "lemur.server.routes_vllm -> vllm" in report


def test_a_wing_imported_by_its_folder_name_breaks_it(tmp_path: Path) -> None:
    """From a checkout's root `server.logs` also imports, as a second copy of
    lemur.server.logs (with its own request-id variable): never allowed."""
    report = broken(tmp_path, {"server/twice.py": "from server.logs import request_id_var\n"})
    assert "Contracts: 2 kept, 1 broken." in report
    assert "lemur.server.twice -> server" in report


def test_tests_and_benchmarks_import_the_wings_as_lemur() -> None:
    wings = {"server", "training", "kernels", "loadtest", "bench"}
    found = []
    for path in [*(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in wings]
    assert found == []
