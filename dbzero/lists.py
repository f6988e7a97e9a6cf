"""Persistent sequences: ``db0.list`` (List), ``db0.tuple`` (Tuple), ``db0.bytearray`` (ByteArray).

They behave like ``list``, ``tuple`` and ``bytearray`` but are not subclasses of them: the
items live in chunks in the prefix and only the chunks touched are decoded (see
``dbzero_ext/chunks.pyx`` for the layout).  Differences from the builtins, all deliberate:

* ``L[a:b]`` returns a plain ``list`` (``tuple`` for Tuple, ``bytes`` for ByteArray); ``L + x``,
  ``L * n`` and ``copy()`` return a new persistent collection in the same prefix.
* Plain containers stored as items become persistent collections (deep copy), exactly as
  for memo attributes; reading them back yields the persistent proxy.
* Python's ``hash()`` raises TypeError for every collection (even Tuple); ``db0.hash()``
  gives a stable hash (a Tuple hashes like the equal tuple).
* ``sort()``, ``reverse()`` and whole-list slice assignment materialise the list in memory.
* ``bytes(ba)`` copies a ByteArray; ``memoryview(bytes(ba))`` gives a buffer (the buffer
  protocol itself would need Python 3.12's ``__buffer__``).
"""

from __future__ import annotations

import operator
from reprlib import recursive_repr
from typing import Any, Iterable, Iterator

from dbzero_ext import chunks as _chunks

from . import workspace

_builtin_list = list
_builtin_tuple = tuple
_builtin_bytes = bytes
_builtin_bytearray = bytearray


def _target_prefix():
    ws = workspace.current()
    return ws.current_prefix()


def _new(cls, px, items: Iterable, refcount: int = 0):
    """A new collection of ``cls`` in ``px`` holding ``items`` (adopted here, all or nothing)."""
    obj = cls.__new__(cls)
    obj._db0_create(px, items, refcount)
    return obj


class _Ordered:
    """``!=`` and ordering comparisons against the plain value a collection reads as:
    subclasses give ``_order_value()`` (that value) and ``_order_operand(other)`` (the
    comparable value of ``other``, or None when the types do not compare)."""

    __slots__ = ()

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __lt__(self, other):
        o = self._order_operand(other)
        return NotImplemented if o is None else self._order_value() < o

    def __le__(self, other):
        o = self._order_operand(other)
        return NotImplemented if o is None else self._order_value() <= o

    def __gt__(self, other):
        o = self._order_operand(other)
        return NotImplemented if o is None else self._order_value() > o

    def __ge__(self, other):
        o = self._order_operand(other)
        return NotImplemented if o is None else self._order_value() >= o

    __hash__ = None


class _SeqMixin(_Ordered):
    """Comparison and formatting shared by List and Tuple (Python-level, not hot)."""

    __slots__ = ()
    _plain = _builtin_list

    def _plain_copy(self):
        out = []
        for chunk in self._chunks():
            out.extend(chunk)
        return self._plain(out)

    @recursive_repr("[...]")
    def __repr__(self) -> str:
        return repr(self._plain_copy())

    def _other(self, other):
        if type(other) is type(self):
            return other._plain_copy()
        if type(other) is self._plain:
            return other
        return None

    def __eq__(self, other):
        if other is self:
            return True
        if type(other) is type(self) or type(other) is self._plain:
            if len(other) != len(self):
                return False
            return self._plain_copy() == self._other(other)
        return NotImplemented

    _order_value = _plain_copy
    _order_operand = _other

    def count(self, value) -> int:
        """Number of items equal to ``value``."""
        return self._count(value)

    def index(self, value, start: int = 0, stop: int = 2**62) -> int:
        """Position of the first item equal to ``value``; ValueError if there is none."""
        pos = self._index(value, operator.index(start), operator.index(stop))
        if pos < 0:
            raise ValueError(f"{value!r} is not in {self._plain.__name__}")
        return pos

    def __reversed__(self) -> Iterator:
        n = len(self)
        i = n - 1
        while i >= 0:
            if i >= len(self):
                i = len(self) - 1
                continue
            yield self[i]
            i -= 1


class List(_SeqMixin, _chunks.MutableSeq):
    """A persistent list.  ``db0.list(iterable=())``; ``db0.list(None)`` raises TypeError."""

    __slots__ = ()
    _db0_kind = _chunks.KIND_LIST

    def __init__(self, iterable: Iterable = ()) -> None:
        px = _target_prefix()
        px.check_writable()
        self._db0_create(px, iterable, 0)

    def copy(self) -> "List":
        """A new persistent List with the same items (nested collections are shared)."""
        return _new(List, self._px, self._plain_copy())

    def __add__(self, other):
        if not isinstance(other, (List, _builtin_list)):
            return NotImplemented
        items = self._plain_copy()
        items.extend(other)
        return _new(List, self._px, items)

    def __iadd__(self, other):
        self.extend(other)
        return self

    def __mul__(self, n):
        try:
            n = operator.index(n)
        except TypeError:
            return NotImplemented
        return _new(List, self._px, self._plain_copy() * n)

    __rmul__ = __mul__

    def __imul__(self, n):
        n = operator.index(n)
        if n <= 0:
            self.clear()
        elif n > 1:
            items = self._plain_copy()
            self.extend(items * (n - 1))
        return self

    def remove(self, value) -> None:
        """Remove the first item equal to ``value`` (ValueError if absent); releases it."""
        pos = self._index(value, 0, len(self))
        if pos < 0:
            raise ValueError("list.remove(x): x not in list")
        del self[pos]

    def sort(self, *, key=None, reverse: bool = False) -> None:
        """Sort in place (stable; materialises the items in memory)."""
        items = self._plain_copy()
        items.sort(key=key, reverse=reverse)
        self._w_rewrite(items)

    def reverse(self) -> None:
        """Reverse in place."""
        items = self._plain_copy()
        items.reverse()
        self._w_rewrite(items)


class Tuple(_SeqMixin, _chunks.SeqBase):
    """A persistent, immutable tuple.  ``db0.tuple(iterable=())``."""

    __slots__ = ()
    _db0_kind = _chunks.KIND_TUPLE
    _plain = _builtin_tuple

    def __init__(self, iterable: Iterable = ()) -> None:
        px = _target_prefix()
        px.check_writable()
        self._db0_create(px, iterable, 0)

    @recursive_repr("(...)")
    def __repr__(self) -> str:
        return repr(self._plain_copy())

    def __add__(self, other):
        if not isinstance(other, (Tuple, _builtin_tuple)):
            return NotImplemented
        return _new(Tuple, self._px, self._plain_copy() + _builtin_tuple(other))

    def __mul__(self, n):
        try:
            n = operator.index(n)
        except TypeError:
            return NotImplemented
        return _new(Tuple, self._px, self._plain_copy() * n)

    __rmul__ = __mul__

    def copy(self) -> "Tuple":
        return self


_BYTES_METHODS_NEW = (
    "capitalize", "center", "expandtabs", "join", "ljust", "lower", "lstrip", "removeprefix",
    "removesuffix", "replace", "rjust", "rstrip", "strip", "swapcase", "title", "translate",
    "upper", "zfill",
)
_BYTES_METHODS_VALUE = (
    "count", "decode", "endswith", "find", "hex", "index", "isalnum", "isalpha", "isascii",
    "isdigit", "islower", "isspace", "istitle", "isupper", "partition", "rfind", "rindex",
    "rpartition", "rsplit", "split", "splitlines", "startswith",
)


class ByteArray(_Ordered, _chunks.MutableSeq):
    """A persistent bytearray.  ``db0.bytearray(b"...")``, ``db0.bytearray()``,
    ``db0.bytearray(iterable_of_ints)``.

    Indexing yields ints, slicing yields ``bytes``; ``bytes(ba)`` copies the content.
    Transforming methods (``upper``, ``replace``, ...) return a new ByteArray in the same
    prefix; ``split``/``partition``/``splitlines`` return plain ``bytes`` pieces.
    """

    __slots__ = ()
    _db0_kind = _chunks.KIND_BYTEARRAY

    def __init__(self, source: Any = b"", encoding: str = None, errors: str = None) -> None:
        if encoding is not None or errors is not None:
            if not isinstance(source, str):
                raise TypeError("encoding without a string argument")
            source = source.encode(encoding or "utf-8", errors or "strict")
        px = _target_prefix()
        px.check_writable()
        self._db0_create(px, _byte_items(source), 0)

    def __bytes__(self) -> bytes:
        return _builtin_bytes(self._bytes_copy())

    def _bytes_copy(self) -> bytearray:
        out = _builtin_bytearray()
        for chunk in self._chunks():
            out += chunk
        return out

    def __repr__(self) -> str:
        return f"ByteArray({_builtin_bytes(self._bytes_copy())!r})"

    def __eq__(self, other):
        if other is self:
            return True
        if isinstance(other, ByteArray):
            return len(other) == len(self) and self._bytes_copy() == other._bytes_copy()
        if isinstance(other, (_builtin_bytes, _builtin_bytearray, memoryview)):
            return len(other) == len(self) and self._bytes_copy() == other
        return NotImplemented

    def _order_operand(self, other):
        if isinstance(other, ByteArray):
            return other._bytes_copy()
        if isinstance(other, (_builtin_bytes, _builtin_bytearray)):
            return other
        return None

    _order_value = _bytes_copy

    def __add__(self, other):
        if isinstance(other, ByteArray):
            other = other._bytes_copy()
        try:
            data = self._bytes_copy() + memoryview(other)
        except TypeError:
            return NotImplemented
        return _new(ByteArray, self._px, data)

    def __radd__(self, other):
        try:
            return _builtin_bytes(other) + _builtin_bytes(self._bytes_copy())
        except TypeError:
            return NotImplemented

    def __iadd__(self, other):
        self.extend(other)
        return self

    def __mul__(self, n):
        try:
            n = operator.index(n)
        except TypeError:
            return NotImplemented
        return _new(ByteArray, self._px, self._bytes_copy() * n)

    def __imul__(self, n):
        n = operator.index(n)
        if n <= 0:
            self.clear()
        elif n > 1:
            self.extend(self._bytes_copy() * (n - 1))
        return self

    __rmul__ = __mul__

    def __reversed__(self):
        return reversed(self._bytes_copy())

    def copy(self) -> "ByteArray":
        return _new(ByteArray, self._px, self._bytes_copy())

    def remove(self, value: int) -> None:
        pos = self._index(operator.index(value), 0, len(self))
        if pos < 0:
            raise ValueError("value not found in bytearray")
        del self[pos]

    def reverse(self) -> None:
        data = self._bytes_copy()
        data.reverse()
        self._w_rewrite(data)


def _byte_items(source: Any):
    if isinstance(source, ByteArray):
        return source._bytes_copy()
    if isinstance(source, str):
        raise TypeError("string argument without an encoding")
    if isinstance(source, int):
        if source < 0:
            raise ValueError("negative count")
        return _builtin_bytearray(source)
    return _builtin_bytearray(source)


def _value_method(name):
    def method(self, *args, **kwargs):
        args = [_builtin_bytes(a._bytes_copy()) if isinstance(a, ByteArray) else a for a in args]
        result = getattr(self._bytes_copy(), name)(*args, **kwargs)
        if isinstance(result, _builtin_bytearray):
            return _builtin_bytes(result)
        if isinstance(result, _builtin_list):
            return [_builtin_bytes(x) for x in result]
        if isinstance(result, _builtin_tuple):
            return _builtin_tuple(_builtin_bytes(x) for x in result)
        return result
    method.__name__ = name
    method.__doc__ = getattr(_builtin_bytearray, name).__doc__
    return method


def _new_method(name):
    def method(self, *args, **kwargs):
        args = [_builtin_bytes(a._bytes_copy()) if isinstance(a, ByteArray) else a for a in args]
        result = getattr(self._bytes_copy(), name)(*args, **kwargs)
        return _new(ByteArray, self._px, result)
    method.__name__ = name
    method.__doc__ = getattr(_builtin_bytearray, name).__doc__
    return method


for _name in _BYTES_METHODS_VALUE:
    setattr(ByteArray, _name, _value_method(_name))
for _name in _BYTES_METHODS_NEW:
    setattr(ByteArray, _name, _new_method(_name))
del _name
