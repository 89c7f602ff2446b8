"""Package attributes imported on first use, so `import atspeed` or `import atspeed.rec` stays cheap
and does not load layers the caller never uses (the original API, the generate glue, the evaluation
stack).

An export may share its name with a submodule: `atspeed.rec.recommend` is both the function that
the README promises and the module defining it. Python binds a submodule to its package attribute
when the submodule is first imported (by anyone, e.g. `from atspeed.rec.recommend import METHODS`),
which would make `from atspeed.rec import recommend` return the module or the function depending on
import order. The package attribute is always the export; the module stays in `sys.modules`.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping


class _LazyPackage(types.ModuleType):
    _exports: Mapping[str, str]  # public name -> module that defines it

    def __getattr__(self, name: str) -> object:  # called only for names not set yet
        exports = self.__dict__.get("_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_exports", {}):
            return  # the import system binding a submodule that an export of the same name shadows
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._exports))


def export_lazily(package: str, exports: Mapping[str, str]) -> None:
    """Make each name in `exports` (name -> defining module) an attribute of `package`, imported on first use."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module.__dict__["_exports"] = dict(exports)
    module.__dict__["__all__"] = list(exports)
