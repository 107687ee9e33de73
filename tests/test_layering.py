"""The package's layers point one way: the library below the trainers and the command line, each constant defined once.

Read from the source (imports anywhere in a module, lazy ones included), so that an import that
points back up fails here rather than as an import cycle in some later order of imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_peft"


def imported_modules(path: Path) -> set[str]:
    """Every ``nnunet_peft`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_peft"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nnunet_peft"))
    return found


LAYERS = [f"layers/{p.name}" for p in sorted((PACKAGE / "layers").glob("*.py"))]
# Above the library: the trainer layer, the command line, and the programs that run nnU-Net's trainers in
# their own process and patch the trainer class (the demo's training, the epoch and network-step harnesses).
ABOVE_THE_LIBRARY = ("training/", "commands/", "cli.py", "demo/train.py", "benchmarks/trainer_epochs.py",
                     "benchmarks/network_steps.py")
# every other module of the package, so that a new one is checked without being listed
LIBRARY = sorted(name for name in (p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
                 if not name.startswith(ABOVE_THE_LIBRARY))


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_imports_nothing_from_the_trainers(module):
    upward = sorted(m for m in imported_modules(PACKAGE / module) if m.startswith("nnunet_peft.training"))
    assert not upward, f"{module} imports {upward}: move what it needs below nnunet_peft.training"


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_imports_nothing_from_the_command_line(module):
    upward = sorted(m for m in imported_modules(PACKAGE / module)
                    if m == "nnunet_peft.cli" or m.startswith("nnunet_peft.commands"))
    assert not upward, (f"{module} imports {upward}: move what it needs into the library (errors.py, "
                        f"trainer_folder.py, ...) and let the command import it from there")


def test_the_library_holds_what_rebuilds_a_network_from_a_trainer_name():
    # these imported the trainer layer once (the name grammar, the network a name builds, the class
    # mapping): the check above must cover them
    assert {"model_folder.py", "named_adapters.py", "name_grammar.py", "trainer_network.py",
            "class_channel_mapping.py", "evaluation/old_task.py", "evaluation/trainer_names.py",
            "planning/from_checkpoint.py", "architectures/unet.py", "layers/base.py", "demo/pipeline.py",
            "evaluation/runs.py", "adapter_sharing.py", "errors.py", "trainer_folder.py"} <= set(LIBRARY)


def test_the_layers_do_not_import_the_injection_or_placement():
    for module in LAYERS:
        above = {"nnunet_peft.injection", "nnunet_peft.placement"} & imported_modules(PACKAGE / module)
        assert not above, f"{module} imports {sorted(above)}"


def test_pretrained_and_the_class_mapping_do_not_import_each_other():
    # both read checkpoints through nnunet_peft.checkpoint_file, below the trainers
    assert "nnunet_peft.class_channel_mapping" not in imported_modules(PACKAGE / "training" / "pretrained.py")
    assert "nnunet_peft.training.pretrained" not in imported_modules(PACKAGE / "class_channel_mapping.py")
    for module in ("training/pretrained.py", "class_channel_mapping.py"):
        assert "nnunet_peft.checkpoint_file" in imported_modules(PACKAGE / module)


def test_each_tuple_of_layer_types_is_written_once():
    for types in ("nn.Conv1d, nn.Conv2d, nn.Conv3d", "nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d"):
        where = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                 if types in p.read_text(encoding="utf-8")]
        assert where == ["layers/kinds.py"], f"({types}) is written in {where}; import it from layers/kinds.py"


@pytest.mark.parametrize("literal, home", [
    ('"peft_summary.json"', "model_folder.py"), ('"load_report.json"', "model_folder.py"),
    ('"adapter_config.json"', "adapter_io.py"), ('"adapter_model.safetensors"', "adapter_io.py"),
    ('".seg_layers."', "placement.py")])
def test_each_file_and_key_name_is_written_once(literal, home):
    where = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py"))
             if literal in p.read_text(encoding="utf-8")]
    assert where == [home], f"{literal} is written in {where}; import its constant from {home}"


def test_the_plans_name_plan_from_checkpoint_writes_is_one_constant():
    from nnunet_peft.demo import pipeline
    from nnunet_peft.planning.from_checkpoint import DEFAULT_PLANS_NAME
    from nnunet_peft.views import plan_views

    assert pipeline.TARGET_PLANS is plan_views.PRETRAINED_PREFIX is DEFAULT_PLANS_NAME == "nnUNetPlans_pretrained"


def test_the_moved_names_still_import_from_where_callers_find_them():
    from nnunet_peft.layers.kinds import CONVOLUTION_TYPES, TRANSPOSED_TYPES
    from nnunet_peft.placement import HEAD_KEY, TARGET_TYPES, head_modules
    from nnunet_peft import class_channel_mapping
    from nnunet_peft.training import pretrained

    assert class_channel_mapping.head_modules is head_modules and pretrained.HEAD_KEY is HEAD_KEY == ".seg_layers."
    assert set(TARGET_TYPES) == set(CONVOLUTION_TYPES) | {nn.Linear}
    assert set(TRANSPOSED_TYPES) < set(CONVOLUTION_TYPES) and len(CONVOLUTION_TYPES) == 6


def test_the_named_adapters_build_no_network():
    # a base is loaded by model_folder.load_base, above the registry: the registry importing the network
    # builders closed a cycle through them and the injection, which imports the registry
    for builder in ("nnunet_peft.model_folder", "nnunet_peft.trainer_network"):
        assert builder not in imported_modules(PACKAGE / "named_adapters.py")


# ---------------------------------------------------------------------------------------- cycles
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_edges(path: Path) -> set[str]:
    """The package modules ``path`` imports anywhere in the file (lazy imports included): a name imported
    from a package that is one of its modules (``from nnunet_peft import name_grammar``) counts as that
    module. A package's ``__init__`` run on the way to a submodule does not count: Python imports a
    package before its submodules, so that order never closes a cycle by itself."""
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package ``level - 1`` steps above this module's
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if not base.startswith("nnunet_peft"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != this}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the path ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_the_path_of_a_cycle_and_none_without_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_imports_form_no_cycle():
    # module-level and lazy imports alike: a lazy import only hides a cycle until the day a caller
    # imports the modules in the other order
    graph = {name: import_edges(path) for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
