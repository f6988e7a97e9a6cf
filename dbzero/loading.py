"""``db0.load`` / ``db0.load_all``: deep conversion of persistent data to plain Python.

==========================  ===================================================
value                       loads as
==========================  ===================================================
memo object                 ``dict`` of its fields (each loaded), or the result of
                            its class's ``__load__(**kwargs)``
List / Tuple                ``list`` / ``tuple``
Dict                        ``dict``
Set                         ``set`` (0.7.0 returned a list; a set keeps the meaning)
ByteArray                   ``bytes``
db0 enum value              its name (``str``)
weak reference              the loaded target, or ``None`` once expired
plain list/tuple/dict/set   the same kind, items loaded
Index, query                RuntimeError ("__load__ not implemented for type: ...")
anything else               unchanged (or its own ``__load__(**kwargs)``)
==========================  ===================================================

Dict keys and set members are loaded too; a member whose loaded form is unhashable (a
memo object, which loads as a dict) stays the object itself.

``exclude`` names fields to leave out of the top-level object's dict.  It cannot be combined
with ``__load__`` (AttributeError).  ``load_all`` ignores the ``__load__`` of the top-level
object only.  Extra keyword arguments are forwarded to every ``__load__`` called.
A reference cycle raises ``RecursionError("Recursive loading detected")``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from dbzero_ext import chunks as _chunks

from . import errors
from .enums import EnumValue
from .prefix import MemoBase, WeakRef


def load(obj: Any, *, exclude: Optional[Iterable[str]] = None, **kwargs: Any) -> Any:
    """Deep-convert ``obj`` to plain Python values (see the module docstring)."""
    return _Loader(kwargs).load(obj, exclude, True)


def load_all(obj: Any, *, exclude: Optional[Iterable[str]] = None, **kwargs: Any) -> Any:
    """Like :func:`load`, but the top-level object's ``__load__`` is ignored."""
    return _Loader(kwargs).load(obj, exclude, False)


class _Loader:
    def __init__(self, kwargs: Dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.active: set = set()

    def load(self, obj: Any, exclude: Optional[Iterable[str]], use_custom: bool) -> Any:
        t = type(obj)
        if t in _SCALARS:
            return obj
        if isinstance(obj, WeakRef):
            target = obj.resolve()
            return None if target is None else self.load(target, None, True)
        if isinstance(obj, EnumValue):
            return obj.name
        if isinstance(obj, MemoBase):
            return self._enter(obj, self._memo, exclude, use_custom)
        if isinstance(obj, _chunks.CollectionBase):
            return self._enter(obj, self._collection, None, True)
        if getattr(t, "_db0_kind", None) is not None or _is_query(obj):
            raise errors.Error(f"__load__ not implemented for type: {t.__name__}")
        if t is list:
            return self._enter(obj, lambda o, *_: [self.load(x, None, True) for x in o], None, True)
        if t is tuple:
            return self._enter(obj, lambda o, *_: tuple(self.load(x, None, True) for x in o), None, True)
        if t is dict:
            return self._enter(obj, lambda o, *_: self._pairs(o.items()), None, True)
        if t is set or t is frozenset:
            return self._enter(obj, lambda o, *_: t(self._member(x) for x in o), None, True)
        load_method = getattr(t, "__load__", None)
        if load_method is not None:
            return load_method(obj, **self.kwargs)
        return obj

    def _enter(self, obj, fn, exclude, use_custom):
        key = id(obj)
        if key in self.active:
            raise RecursionError("Recursive loading detected")
        self.active.add(key)
        try:
            return fn(obj, exclude, use_custom)
        finally:
            self.active.discard(key)

    def _memo(self, obj: MemoBase, exclude, use_custom: bool) -> Any:
        custom = getattr(type(obj), "__load__", None) if use_custom else None
        if custom is not None:
            if exclude is not None:
                raise AttributeError("Cannot exclude values when __load__ is implemented")
            return self.load(custom(obj, **self.kwargs), None, True)
        skip = frozenset(exclude) if exclude is not None else frozenset()
        return {name: self.load(value, None, True)
                for name, value in vars(obj).items() if name not in skip}

    def _collection(self, obj, _exclude, _use_custom) -> Any:
        kind = getattr(obj, "_db0_kind", None)
        if kind == _chunks.KIND_LIST:
            return [self.load(x, None, True) for chunk in obj._chunks() for x in chunk]
        if kind == _chunks.KIND_TUPLE:
            return tuple(self.load(x, None, True) for chunk in obj._chunks() for x in chunk)
        if kind == _chunks.KIND_DICT:
            return self._pairs(obj.items())
        if kind == _chunks.KIND_SET:
            return {self._member(x) for x in obj}
        if kind == _chunks.KIND_BYTEARRAY:
            return bytes(obj)
        raise errors.Error(f"__load__ not implemented for type: {type(obj).__name__}")

    def _member(self, x: Any) -> Any:
        loaded = self.load(x, None, True)
        try:
            hash(loaded)
        except TypeError:
            return x
        return loaded

    def _pairs(self, items) -> dict:
        return {self._member(k): self.load(v, None, True) for k, v in items}


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def _is_query(obj: Any) -> bool:
    try:
        from .query import Query
    except ImportError:  # pragma: no cover - queries are optional here
        return False
    return isinstance(obj, Query)
