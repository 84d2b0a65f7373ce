"""The flat `ctl.` namespace: generated from each module's `__all__`, layered, and every name used or documented."""
import ast
import importlib
import json
import re
from pathlib import Path

import pytest

import convtips_lib as ctl

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "topics", "studies", "ui", "course"]   # arrows point down only: a module imports from its layer or lower


def _lesson_code() -> str:
    return "\n".join("".join(c["source"]) for nb in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
                     for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")


def test_namespace_is_the_union_of_the_modules_all():
    names = [n for m in ctl.MODULES for n in importlib.import_module(f"convtips_lib.{m}").__all__]
    assert ctl.__all__ == names
    assert len(set(names)) == len(names), "two modules export the same name: one word for one thing"
    assert all(getattr(ctl, n) is getattr(importlib.import_module(f"convtips_lib.{m}"), n)
               for m in ctl.MODULES for n in importlib.import_module(f"convtips_lib.{m}").__all__)


def test_every_exported_name_is_used_by_a_lesson_or_documented():
    code, readme = _lesson_code(), (ROOT / "README.md").read_text()
    orphans = [n for n in ctl.__all__ if not re.search(rf"\bctl\.{n}\b", code) and f"`{n}" not in readme]
    assert not orphans, f"exported but neither used by a lesson nor documented in README.md: {orphans}"


def _imports(path: Path) -> list:
    tree = ast.parse(path.read_text())
    return [(n.level, n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]


@pytest.mark.parametrize("path", sorted((ROOT / "convtips_lib").glob("*/*.py")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_layers_import_downwards_only(path):
    here = LAYERS.index(path.parent.name)
    for level, module in _imports(path):
        if level == 2:   # from ..<layer>.<module> import ...
            assert LAYERS.index(module.split(".")[0]) <= here, f"{path.name} imports upwards from {module}"


@pytest.mark.parametrize("path", sorted((ROOT / "convtips_lib").glob("*/*.py")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_module_reaches_into_another_modules_private_helpers(path):
    for level, module in _imports(path):
        names = re.findall(rf"from \.+{re.escape(module)} import \(?([^)\n]+)", path.read_text())
        private = [n.strip() for chunk in names for n in chunk.split(",") if n.strip().startswith("_")]
        assert not private, f"{path.name} imports private {private} from {module}: make it public in one place"


def test_ipywidgets_is_imported_only_when_a_widget_is_built():
    for path in (ROOT / "convtips_lib").rglob("*.py"):
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        mods = [a.name for n in top if isinstance(n, ast.Import) for a in n.names] + \
               [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not any(m.startswith("ipywidgets") for m in mods), f"{path} imports ipywidgets at the top"
