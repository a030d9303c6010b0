"""The installed package: every module imports with the core dependencies alone, every third-party package it
imports is declared, and no module shadows a public name."""
import ast
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import llavao1_jax as lj

PACKAGE_DIR = Path(lj.__file__).parent
TEST_ONLY = ("torch", "pytest", "scipy")


def _module_names() -> list[str]:
    """Every module of the package except `__main__` entry points (importing one runs it)."""
    return sorted(m.name for m in pkgutil.walk_packages(lj.__path__, "llavao1_jax.")
                  if not m.name.endswith("__main__"))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_module_imports_without_test_only_packages():
    """In a fresh interpreter where the test extra's packages cannot be imported (as after `pip install .`),
    importing every module succeeds and prints nothing."""
    code = ("import importlib, sys\n"
            f"sys.modules.update(dict.fromkeys({TEST_ONLY!r}))  # None: import fails, find_spec finds nothing\n"
            f"for name in {_module_names()!r}:\n"
            "    importlib.import_module(name)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout + run.stderr == ""


def test_imported_packages_are_declared_core_dependencies():
    """Each top-level third-party import in the package's source belongs to a distribution that setup.py declares
    among its core requirements (not only in an extra)."""
    imported = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"llavao1_jax", "__future__"})
    distributions = importlib.metadata.packages_distributions()
    declared = {_normalise(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])
                for req in importlib.metadata.requires("llavao1_jax") if "extra ==" not in req}
    undeclared = {name: distributions.get(name) for name in third_party
                  if not {_normalise(d) for d in distributions.get(name, [name])} & declared}
    assert not undeclared, f"imported but not declared in setup.py CORE: {undeclared}"


def test_public_names_survive_importing_every_module():
    """Importing a submodule never replaces a public name of `llavao1_jax` (a module `llavao1_jax/generate.py`
    would turn `lj.generate` into that module); `lj.search` is its subpackage, which calls the search function."""
    for name in _module_names():
        importlib.import_module(name)
    assert inspect.isfunction(lj.generate)
    with pytest.raises(ValueError, match="non-empty list"):
        lj.search(None, None, [])  # the subpackage called is the search function (it checks questions first)
    for name in set(lj.__all__) - {"search"}:
        assert not inspect.ismodule(getattr(lj, name)), name
