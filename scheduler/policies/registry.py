"""Registry of decode-selection policies: adding a policy is one module in this package."""

from __future__ import annotations

import importlib
import pkgutil

from netkv.registry import Registry


def _load_all() -> None:
    from netkv.scheduler import policies as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("registry", "base"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")


POLICIES: Registry[type] = Registry("policy", loader=_load_all)


def register(cls):
    """Class decorator: make a Policy subclass available under its `name` (listed by its `order`)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} has no policy name")
    return POLICIES.add(cls.name, cls, getattr(cls, "order", 100))


def names() -> list[str]:
    """Registered policy names, baselines first (each class's `order`)."""
    return POLICIES.names()


def get(name: str) -> type:
    return POLICIES.get(name)


def create(name: str, params: dict | None = None, seed: int = 0):
    return get(name)(params or {}, seed)
