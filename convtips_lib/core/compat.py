"""Deprecated names: old keyword arguments keep working for a while, with a warning that names the new one."""
from __future__ import annotations

import functools
import warnings

__all__ = ["renamed_kwargs", "ConvtipsDeprecationWarning", "warn_deprecated"]


class ConvtipsDeprecationWarning(DeprecationWarning):
    """A name of this library that still works but will go: the project's own tests turn it into an error."""


def warn_deprecated(message: str, stacklevel: int = 3) -> None:
    """Warn that an old name of this library was used (`message` names the new one), attributed to the caller's caller."""
    warnings.warn(message, ConvtipsDeprecationWarning, stacklevel=stacklevel)


def renamed_kwargs(**old_to_new: str):
    """Decorator: accept each old keyword as its new name, warning once per call (`@renamed_kwargs(size='img_size')`)."""
    def deco(fn):
        owner = fn.__qualname__.split(".")[-2:-1]   # a constructor is named by its class: Recipe(old=...)
        name = owner[0] if fn.__name__ == "__init__" and owner else fn.__name__

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            for old, new in old_to_new.items():
                if old in kw:
                    if new in kw:
                        raise TypeError(f"{name}() got both {old!r} (deprecated) and {new!r}: pass only {new!r}")
                    warn_deprecated(f"{name}({old}=...) is deprecated: use {new}=...")
                    kw[new] = kw.pop(old)
            return fn(*args, **kw)
        return wrapper
    return deco
