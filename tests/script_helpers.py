"""Loading the scripts under scripts/ in tests (they are not a package), and a fake LPBA40 folder for them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module; scripts/ goes on sys.path first, as when the script runs (one
    script may import another's steps)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_lpba40(root: Path, n: int) -> Path:
    """Empty files named as LPBA40's delineation-space NIfTI files of subjects S02 .. S(n+1)."""
    for sub, suffix in (("images", "skullstripped"), ("labels", "structure.label")):
        (root / sub).mkdir(parents=True)
        for i in range(2, 2 + n):
            (root / sub / f"S{i:02d}.delineation.{suffix}.nii.gz").write_bytes(b"")
    return root
