"""The layout is the architecture: product subpackages never import the lab.

Every import statement of the product's modules is read (top level and inside functions, plain
and `importlib.import_module("...")` strings), so a lazy import cannot slip past either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "canarykit"
PRODUCT = ("core", "mesh", "cluster", "routers", "analysis", "notify", "storage", "rollout",
           "deploy", "cli")
LAB = "canarykit.lab"


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module `path` imports, including importlib strings."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("canarykit."):
            found.append((node.lineno, node.value))
    return found


def product_modules() -> list[Path]:
    modules = [PACKAGE / "__init__.py", PACKAGE / "__main__.py"]
    for part in PRODUCT:
        modules += sorted((PACKAGE / part).rglob("*.py"))
    return modules


def test_the_package_is_one_subpackage_per_part_and_the_lab():
    parts = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert parts == {*PRODUCT, "lab"}


@pytest.mark.parametrize("module", product_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_product_code_never_imports_the_lab(module: Path):
    reaching = [f"line {line}: {name}" for line, name in imported_names(module)
                if name == LAB or name.startswith(LAB + ".")]
    assert not reaching, f"{module.relative_to(PACKAGE)} imports the lab: {reaching}"


def test_the_import_reader_sees_lazy_and_string_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from canarykit.lab import processes\n"
                      "    importlib.import_module('canarykit.lab.demo')\n")
    assert [name for _, name in imported_names(module)] == [
        "canarykit.lab.processes", "canarykit.lab.demo"]
