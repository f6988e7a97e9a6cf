"""Small utilities: copying and dropping prefixes, bulk assignment, comparisons."""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from . import errors, workspace
from .memo import is_memo, singleton_of
from .prefix import MemoBase, raw_dict


def copy_prefix(file_path: str, prefix: Optional[str] = None) -> None:
    """Write a consistent, compacted copy of a prefix (committed state) to ``file_path``.

    The copy is a complete prefix file: put it under another root (with the same
    relative name) to open it there.  Pending changes are committed first.
    """
    ws = workspace.current()
    with ws.lock:
        px = ws.get_prefix(prefix)
        if not px.readonly:
            px.commit()
        if os.path.exists(file_path):
            raise FileExistsError(f"copy_prefix: {file_path} already exists")
        os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
        px.storage.copy_to(file_path)


def drop(prefix_name: str) -> None:
    """Close (if open) and delete a prefix's files.  The data is gone for good."""
    ws = workspace.current()
    with ws.lock:
        name = workspace.normalize_prefix_name(prefix_name)
        ws.close_prefix(name)
        path = ws.path_of(name)
        for suffix in ("", "-lock", ".lock"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass


def assign(*objs: Any, **attrs: Any) -> None:
    """Set the same attributes on every object (not atomic; see db0.atomic_assign)."""
    for obj in objs:
        for name, value in attrs.items():
            try:
                setattr(obj, name, value)
            except (TypeError, AttributeError) as exc:
                raise errors.Error(f"Failed to set attribute '{name}': {exc}") from exc


def compare(a: Any, b: Any, tags: Optional[Iterable[Any]] = None) -> bool:
    """True if two memo objects hold equal fields (and, if given, the same of ``tags``)."""
    if not isinstance(a, MemoBase) or not isinstance(b, MemoBase):
        raise TypeError("db0.compare expects two memo objects")
    if vars(a) != vars(b):
        return False
    if tags:
        from .tags import tags as tag_manager
        for tag in tags:
            if (tag in tag_manager(a)) != (tag in tag_manager(b)):
                return False
    return True


def find_singleton(cls: type, prefix: Optional[str] = None) -> Any:
    """The singleton instance of ``cls``, or None if it was never created."""
    if not is_memo(cls) or not cls.__db0_singleton__:
        raise errors.Error(f"{getattr(cls, '__name__', cls)} is not a dbzero singleton type")
    ws = workspace.current()
    with ws.lock:
        px = ws.prefix_for_read(prefix) if prefix is not None else \
            (ws.prefix_for_class(cls) if cls.__db0_prefix__ else ws.current_prefix())
        return singleton_of(px, cls)


def get_type(obj: Any) -> type:
    """The memo class of an object (``MemoBase`` subclass for classes not importable here)."""
    if not isinstance(obj, MemoBase):
        raise TypeError(f"{type(obj).__name__} is not a memo object")
    return type(obj)
