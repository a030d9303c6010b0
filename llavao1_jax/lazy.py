"""Lazily resolved public names for package `__init__` modules (keeps `import llavao1_jax` cheap)."""
import importlib


def lazy_getattr(package: str, exports: dict[str, str]):
    """A module `__getattr__` that imports `exports[name]` (a module path) on first access of `name`; a name whose
    path is the subpackage `package.name` itself resolves to that subpackage."""

    def __getattr__(name):
        if name in exports:
            module = importlib.import_module(exports[name])
            return module if exports[name] == f"{package}.{name}" else getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
