"""The micro run every training test starts from (one recipe run per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lemur.training.config import load_config
from lemur.training.recipe import run_recipe
from tests.support.training import MICRO


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    run = tmp_path_factory.mktemp("micro") / "run"
    export = run.parent / "export"
    summary = run_recipe(load_config(MICRO), run, export)
    return run, export, summary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that start from the micro run share one pytest-xdist worker
    (`--dist loadgroup` in the Makefile), so the run is made once, not once per worker."""
    for item in items:
        if "micro_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("micro_run"))
