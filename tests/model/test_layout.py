"""The layout rules of docs/architecture.md: the files that travel with a checkpoint import only each other, no
module imports another's underscore names, and scripts are leaves (no path tricks, nothing imports them)."""

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "egma_hf"
TRAVELS_WITH_CHECKPOINT = ["configuration_egma", "modeling_egma", "losses", "distributed", "image_processing_egma",
                           "processing_egma", "pipeline_egma", "zero_shot", "prompts"]
SCRIPTS = sorted((REPO_ROOT / "examples").glob("*.py")) + sorted((REPO_ROOT / "benchmarks").glob("*.py"))


def imports_of(path: Path) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def first_party_modules(path: Path, node: ast.ImportFrom) -> str | None:
    """The egma_hf module an ImportFrom names (dotted, from the package root), or None for a third-party one."""
    if node.level == 0:
        return node.module if node.module and node.module.split(".")[0] == "egma_hf" else None
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])  # the importing file's package
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@pytest.mark.parametrize("name", TRAVELS_WITH_CHECKPOINT)
def test_files_that_travel_with_a_checkpoint_import_only_each_other(name):
    path = PACKAGE / f"{name}.py"
    for node in imports_of(path):
        if isinstance(node, ast.Import):
            assert not any(alias.name.split(".")[0] == "egma_hf" for alias in node.names), \
                f"{path.name}:{node.lineno}: absolute egma_hf import; transformers copies only the flat files"
            continue
        if node.level == 0:
            assert (node.module or "").split(".")[0] != "egma_hf", \
                f"{path.name}:{node.lineno}: `from {node.module} import`: use a relative import of a flat file"
            continue
        assert node.level == 1, f"{path.name}:{node.lineno}: imports from outside egma_hf/'s flat files"
        targets = [node.module] if node.module else [alias.name for alias in node.names]
        for target in targets:
            assert target in TRAVELS_WITH_CHECKPOINT, (
                f"{path.name}:{node.lineno}: imports .{target}, which does not travel with a checkpoint "
                f"(only {TRAVELS_WITH_CHECKPOINT} do)")


def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + SCRIPTS


def test_no_module_imports_another_modules_underscore_names():
    found = []
    for path in python_files():
        for node in imports_of(path):
            if isinstance(node, ast.ImportFrom) and first_party_modules(path, node) is not None:
                found += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found, f"underscore names imported across modules: {found}"


def test_scripts_are_leaves():
    script_names = {path.stem for path in SCRIPTS}
    path_trick = "sys." + "path"  # spelled apart so that this file does not match itself
    for path in [*SCRIPTS, *sorted((REPO_ROOT / "tests").rglob("*.py"))]:
        if path.resolve() == Path(__file__).resolve():
            continue
        assert path_trick not in path.read_text(), f"{path.relative_to(REPO_ROOT)} edits the import path"
    for path in [*python_files(), *sorted((REPO_ROOT / "tests").rglob("*.py"))]:
        for node in imports_of(path):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                continue
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            imported = {name.split(".")[0] for name in names} & (script_names | {"examples", "benchmarks"})
            assert not imported, (f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports the script(s) "
                                  f"{sorted(imported)}; scripts are leaves: move what it needs into the library")
