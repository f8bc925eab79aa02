"""A module imported on first use: `torch = lazy_module("torch")` costs nothing at import.

torch takes 2-3 s to import (transformers, peft more). The app's pages import the library to
show data, and most of them never run a model: a module that names torch at its top level
through this proxy imports it only when a function first touches ``torch.<something>``, so
opening a page that only shows data does not pay for it. ``sys.modules`` holds the real module
only once it is imported; the proxy never puts itself there.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

Fn = TypeVar("Fn", bound=Callable[..., Any])


class LazyModule:
    """Stands in for a module; the first attribute read imports it (then each read is a dict
    lookup in sys.modules, cheap next to any tensor operation)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._module(), attr)

    def _module(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> Any:
    """Return a stand-in for the named module that imports it on first attribute access."""
    return LazyModule(name)


def no_grad(function: Fn) -> Fn:
    """``@torch.no_grad()`` that imports torch on the first call, not when the function is
    defined."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
