"""Registry of decode-selection policies: adding a policy is one module in this package."""

from __future__ import annotations

import importlib
import pkgutil

_REGISTRY: dict[str, type] = {}
_loaded = False


def register(cls):
    """Class decorator: make a Policy subclass available under its `name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} has no policy name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    from netkv.scheduler import policies as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("registry", "base"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _loaded = True


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy '{name}' (known: {', '.join(sorted(_REGISTRY))})") from None


def create(name: str, params: dict | None = None, seed: int = 0):
    return get(name)(params or {}, seed)
