"""Persistent hashed collections: ``db0.dict`` (Dict) and ``db0.set`` (Set).

They behave like ``dict`` and ``set``, including insertion-order iteration, but keep their
items in hash buckets in the prefix (layout in ``dbzero_ext/chunks.pyx``): a lookup reads one
bucket, iteration walks an insertion-order log.  Keys are compared by their canonical
encoding (``dbzero_ext.keys.encode_key``), which matches Python equality for the storable
key types (``1 == 1.0 == True`` are one key; the first key object is kept, the last value
wins); memo objects and db0 enum values are keys by identity.

Not subclasses of dict/set; registered as ``collections.abc.MutableMapping`` /
``MutableSet``.  Binary set operations, ``|`` on dicts and ``copy()`` return new persistent
collections in the same prefix.  Updates with several items validate every item first, so a
bad key or value leaves the collection unchanged.
"""

from __future__ import annotations

import collections.abc as _abc
from reprlib import recursive_repr
from typing import Any, Iterable, Iterator

from dbzero_ext import chunks as _chunks

from . import workspace
from .prefix import MemoBase, WeakRef

check_key = _chunks.check_key

_builtin_dict = dict
_builtin_set = set
_builtin_list = list
_builtin_tuple = tuple
_MISSING = object()


def check_value(px, v) -> None:
    """Raise (without side effects) if ``px.adopt(v)`` would reject ``v``."""
    t = type(v)
    if t in _PLAIN:
        return
    if t is _builtin_list or t is _builtin_tuple:
        for x in v:
            check_value(px, x)
        return
    if t is _builtin_set:
        for x in v:
            check_key(px, x)
        return
    if t is _builtin_dict:
        for k, x in v.items():
            check_key(px, k)
            check_value(px, x)
        return
    if isinstance(v, (MemoBase, WeakRef, _chunks.CollectionBase)):
        return
    px.workspace.check_storable(v)


_PLAIN = frozenset({int, str, float, bool, type(None), bytes})


def _target_prefix():
    return workspace.current().current_prefix()


def _pairs(args, kwargs) -> list:
    """The (key, value) pairs of dict(*args, **kwargs) / update(*args, **kwargs)."""
    if len(args) > 1:
        raise TypeError(f"expected at most 1 argument, got {len(args)}")
    pairs = []
    if args:
        other = args[0]
        if isinstance(other, Dict):
            pairs.extend(other.items())
        elif hasattr(other, "keys"):
            for k in other.keys():
                pairs.append((k, other[k]))
        else:
            for i, item in enumerate(other):
                try:
                    k, v = item
                except (TypeError, ValueError):
                    try:
                        n = len(item)
                    except TypeError:
                        raise TypeError(f"cannot convert dictionary update sequence element #{i} "
                                        "to a sequence") from None
                    raise ValueError(f"dictionary update sequence element #{i} has length {n}; "
                                     "2 is required") from None
                pairs.append((k, v))
    pairs.extend(kwargs.items())
    return pairs


def _filled(coll, px, items, refcount: int):
    """Register ``coll`` as new in ``px`` and fill it; on failure release what it took.

    Callers validate the items first, so a failure here is exceptional (e.g. a memo object
    expiring meanwhile); the half-filled collection is emptied and, holding no reference,
    collected at the next commit.
    """
    coll._db0_create_empty(px, refcount)
    try:
        coll._fill(items)
    except BaseException:
        coll.clear()
        if refcount:
            coll._db0_decref()
        raise
    return coll


def _new_dict(px, pairs, refcount: int = 0) -> "Dict":
    return _filled(Dict.__new__(Dict), px, pairs, refcount)


def _new_set(px, items, refcount: int = 0) -> "Set":
    return _filled(Set.__new__(Set), px, items, refcount)


class _Keys(_abc.KeysView):
    __slots__ = ()

    def __iter__(self):
        return self._mapping._iter(0)

    def __reversed__(self):
        return reversed(_builtin_list(self._mapping._iter(0)))

    def __repr__(self):
        return f"dict_keys({_builtin_list(self)!r})"


class _Values(_abc.ValuesView):
    __slots__ = ()

    def __iter__(self):
        return self._mapping._iter(1)

    def __reversed__(self):
        return reversed(_builtin_list(self._mapping._iter(1)))

    def __repr__(self):
        return f"dict_values({_builtin_list(self)!r})"


class _Items(_abc.ItemsView):
    __slots__ = ()

    def __iter__(self):
        return self._mapping._iter(2)

    def __reversed__(self):
        return reversed(_builtin_list(self._mapping._iter(2)))

    def __contains__(self, item):
        try:
            key, value = item
        except (TypeError, ValueError):
            return False
        v = self._mapping._lookup(key, _MISSING)
        return v is not _MISSING and (v is value or v == value)

    def __repr__(self):
        return f"dict_items({_builtin_list(self)!r})"


class Dict(_chunks.DictCore):
    """A persistent dict: ``db0.dict(mapping_or_pairs=(), **kwargs)``."""

    __slots__ = ()
    _db0_kind = _chunks.KIND_DICT

    def __init__(self, *args, **kwargs) -> None:
        pairs = _pairs(args, kwargs)
        px = _target_prefix()
        px.check_writable()
        for k, v in pairs:
            check_key(px, k)
            check_value(px, v)
        _filled(self, px, pairs, 0)

    def _fill(self, pairs) -> None:
        put = self._w_put
        for k, v in pairs:
            put(k, v)

    # -- reading ---------------------------------------------------------------------------

    def keys(self):
        return _Keys(self)

    def values(self):
        return _Values(self)

    def items(self):
        return _Items(self)

    def __reversed__(self) -> Iterator:
        return reversed(_builtin_list(self._iter(0)))

    @recursive_repr("{...}")
    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self._iter(2)) + "}"

    def __eq__(self, other):
        if other is self:
            return True
        if not isinstance(other, (Dict, _builtin_dict)):
            return NotImplemented
        if len(other) != len(self):
            return False
        for k, v in self._iter(2):
            o = other.get(k, _MISSING)
            if o is _MISSING or not (o is v or o == v):
                return False
        return True

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    # -- writing ---------------------------------------------------------------------------

    def pop(self, key, *default):
        """Remove ``key`` and return its value; KeyError (or ``default``) if absent."""
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        found = self._w_remove(key)
        if found is None:
            if default:
                return default[0]
            raise KeyError(key)
        return found[1]

    def popitem(self):
        """Remove and return the last inserted (key, value) pair (LIFO)."""
        found = self._w_popitem()
        if found is None:
            raise KeyError("popitem(): dictionary is empty")
        return found

    def setdefault(self, key, default=None):
        """``D[key]`` if present, else store ``default`` and return the stored value."""
        v = self._lookup(key, _MISSING)
        if v is not _MISSING:
            return v
        self._w_put(key, default, False)
        return self._lookup(key, None)

    def update(self, *args, **kwargs) -> None:
        """Like dict.update; every key and value is validated before anything changes."""
        pairs = _pairs(args, kwargs)
        px = self._px
        for k, v in pairs:
            check_key(px, k)
            check_value(px, v)
        self._fill(pairs)

    def copy(self) -> "Dict":
        """A new persistent Dict with the same items (nested collections are shared)."""
        return _new_dict(self._px, _builtin_list(self._iter(2)))

    @classmethod
    def fromkeys(cls, iterable: Iterable, value: Any = None) -> "Dict":
        return cls((k, value) for k in iterable)

    def __or__(self, other):
        if not isinstance(other, (Dict, _builtin_dict)):
            return NotImplemented
        new = self.copy()
        new.update(other)
        return new

    def __ror__(self, other):
        if not isinstance(other, _builtin_dict):
            return NotImplemented
        pairs = _builtin_list(other.items())
        pairs.extend(self._iter(2))
        return _new_dict(self._px, pairs)

    def __ior__(self, other):
        self.update(other)
        return self


class Set(_chunks.SetCore):
    """A persistent set: ``db0.set(iterable=())``.  Iterates in insertion order."""

    __slots__ = ()
    _db0_kind = _chunks.KIND_SET

    def __init__(self, iterable: Iterable = ()) -> None:
        items = _builtin_list(iterable)
        px = _target_prefix()
        px.check_writable()
        for k in items:
            check_key(px, k)
        _filled(self, px, items, 0)

    def _fill(self, items) -> None:
        add = self.add
        for k in items:
            add(k)

    def _new(self, items) -> "Set":
        return _new_set(self._px, items)

    def __repr__(self) -> str:
        if not len(self):
            return "Set()"
        return "{" + ", ".join(repr(k) for k in self) + "}"

    __hash__ = None

    # -- single items ------------------------------------------------------------------------

    def remove(self, item) -> None:
        """Remove ``item``; KeyError if it is not a member."""
        if self._w_remove(item) is None:
            raise KeyError(item)

    def pop(self):
        """Remove and return an item (the most recently added one)."""
        found = self._w_popitem()
        if found is None:
            raise KeyError("pop from an empty set")
        return found[0]

    def copy(self) -> "Set":
        return self._new(_builtin_list(self))

    # -- set algebra -----------------------------------------------------------------------

    def _checked(self, iterables) -> list:
        px = self._px
        out = []
        for it in iterables:
            items = _builtin_list(it)
            for k in items:
                check_key(px, k)
            out.append(items)
        return out

    def update(self, *iterables) -> None:
        """Add the items of every iterable (all validated first)."""
        for items in self._checked(iterables):
            self._fill(items)

    def union(self, *iterables) -> "Set":
        new = self.copy()
        new.update(*iterables)
        return new

    def intersection(self, *iterables) -> "Set":
        keep = _builtin_list(self)
        for it in iterables:
            other = it if isinstance(it, (Set, _builtin_set, frozenset)) else _builtin_set(it)
            keep = [k for k in keep if k in other]
        return self._new(keep)

    def difference(self, *iterables) -> "Set":
        keep = _builtin_list(self)
        for it in iterables:
            other = it if isinstance(it, (Set, _builtin_set, frozenset)) else _builtin_set(it)
            keep = [k for k in keep if k not in other]
        return self._new(keep)

    def symmetric_difference(self, iterable) -> "Set":
        other = _builtin_list(_unique(iterable))
        mine = _builtin_list(self)
        out = [k for k in mine if k not in _Probe(other)]
        out.extend(k for k in other if k not in self)
        return self._new(out)

    def intersection_update(self, *iterables) -> None:
        others = [it if isinstance(it, (Set, _builtin_set, frozenset)) else _builtin_set(it)
                  for it in iterables]
        for k in _builtin_list(self):
            if not all(k in o for o in others):
                self.discard(k)

    def difference_update(self, *iterables) -> None:
        for it in iterables:
            if it is self:
                self.clear()
                continue
            for k in _builtin_list(it):
                self.discard(k)

    def symmetric_difference_update(self, iterable) -> None:
        other = _builtin_list(_unique(iterable))
        for k in other:
            check_key(self._px, k)
        for k in other:
            if k in self:
                self.discard(k)
            else:
                self.add(k)

    def issubset(self, iterable) -> bool:
        other = iterable if isinstance(iterable, (Set, _builtin_set, frozenset)) else _builtin_set(iterable)
        return len(self) <= len(other) and all(k in other for k in self)

    def issuperset(self, iterable) -> bool:
        return all(k in self for k in iterable)

    def isdisjoint(self, iterable) -> bool:
        return not any(k in self for k in iterable)

    @staticmethod
    def _is_setlike(other) -> bool:
        return isinstance(other, (Set, _builtin_set, frozenset))

    def __eq__(self, other):
        if other is self:
            return True
        if not self._is_setlike(other):
            return NotImplemented
        return len(self) == len(other) and all(k in other for k in self)

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __le__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        return self.issubset(other)

    def __lt__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        return len(self) < len(other) and self.issubset(other)

    def __ge__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        return len(self) >= len(other) and self.issuperset(other)

    def __gt__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        return len(self) > len(other) and self.issuperset(other)

    def __or__(self, other):
        return self.union(other) if self._is_setlike(other) else NotImplemented

    def __and__(self, other):
        return self.intersection(other) if self._is_setlike(other) else NotImplemented

    def __sub__(self, other):
        return self.difference(other) if self._is_setlike(other) else NotImplemented

    def __xor__(self, other):
        return self.symmetric_difference(other) if self._is_setlike(other) else NotImplemented

    def __ror__(self, other):
        return self.union(other) if self._is_setlike(other) else NotImplemented

    def __rand__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        return self._new([k for k in other if k in self])

    def __rsub__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        return self._new([k for k in other if k not in self])

    def __rxor__(self, other):
        return self.symmetric_difference(other) if self._is_setlike(other) else NotImplemented

    def __ior__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        self.update(other)
        return self

    def __iand__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        self.intersection_update(other)
        return self

    def __isub__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        self.difference_update(other)
        return self

    def __ixor__(self, other):
        if not self._is_setlike(other):
            return NotImplemented
        self.symmetric_difference_update(other)
        return self


class _Probe:
    """Membership in a list of keys by canonical key (works for unhashable-by-Python memo keys)."""

    def __init__(self, items):
        self._keys = {_chunks_ekey(k) for k in items}

    def __contains__(self, item):
        return _chunks_ekey(item) in self._keys


def _chunks_ekey(k):
    from dbzero_ext.keys import encode_key
    return encode_key(k, _chunks.key_fallback)


def _unique(iterable):
    """Items of ``iterable`` without repeats (by canonical key), first occurrence kept."""
    seen = _builtin_set()
    out = []
    for k in iterable:
        try:
            ek = _chunks_ekey(k)
        except TypeError:
            hash(k)
            raise
        if ek not in seen:
            seen.add(ek)
            out.append(k)
    return out


_abc.MutableMapping.register(Dict)
_abc.MutableSet.register(Set)
