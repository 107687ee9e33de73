"""The wheel's package list covers every package of the source tree (an editable install hides a missing one)."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}
    expected = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            expected.add(".".join((package, *relative)))
    missing = sorted(expected - set(setuptools["packages"]))
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}: a wheel install would not have them"
