"""A source tree laid out as it installs: each wing's folder (pyproject's
package-dir: server/ is lemur.server, ...) copied to where it sits in the
installed package. Tools that read packages from folders (import-linter) or
run a revision's code without installing it use this."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path


def lay_out(tree: Path, root: Path) -> Path:
    """Copies `tree`'s packages under `root` (root/lemur/server/..., ...) and returns `root`."""
    package_dir = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(package_dir.items()):
        target = root.joinpath(*package.split("."))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "lemur")
        shutil.copytree(tree / folder, target, ignore=ignore, dirs_exist_ok=True)
    return root
