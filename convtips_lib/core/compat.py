"""Deprecated names: old keyword arguments keep working for a while, with a warning that names the new one."""
from __future__ import annotations

import functools
import warnings

__all__ = ["renamed_kwargs"]


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
                    warnings.warn(f"{name}({old}=...) is deprecated: use {new}=...", DeprecationWarning,
                                  stacklevel=2)
                    kw[new] = kw.pop(old)
            return fn(*args, **kw)
        return wrapper
    return deco
