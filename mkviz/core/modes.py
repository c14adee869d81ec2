"""Temporary switches on modules: set one attribute on several objects, restore each one's own value after.

`mkviz.core.key.key_impl` (the key's fast or reference path) and `mkviz.core.switches.eager_attention` (timm's
`fused_attn` flag) are built on it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

__all__ = ["temporarily"]


@contextlib.contextmanager
def temporarily(objects: Iterable[Any], name: str, value: Any) -> Iterator[None]:
    """Set attribute `name` to `value` on every object; on exit (also on an exception) restore each object's
    previous value."""
    objects = list(objects)
    saved = [getattr(o, name) for o in objects]
    try:
        for o in objects:
            setattr(o, name, value)
        yield
    finally:
        for o, s in zip(objects, saved):
            setattr(o, name, s)
