"""Persistent collections: ``db0.list/dict/set/tuple/bytearray`` and ``db0.hash``.

This module wires the collection classes (``dbzero.lists``, ``dbzero.dicts``, built on the
Cython core in ``dbzero_ext.chunks``) into the prefix:

* each class is registered as a collection *kind* (List=1, Dict=2, Set=3, Tuple=4,
  ByteArray=5), so stored references decode to the right proxy;
* plain ``list``/``dict``/``set``/``tuple`` values adopted by a prefix (memo attributes,
  collection items) are converted by the converters below into new persistent collections
  (deep copy; nested containers convert recursively).  A converted collection starts with
  reference count 1: the reference held by whatever adopted it.
"""

from __future__ import annotations

from typing import Any

from dbzero_ext import chunks as _chunks
from dbzero_ext.keys import stable_hash as _stable_hash

from . import errors
from .cache import chunk_cache
from .dicts import Dict, Set, _new_dict, _new_set, check_key, check_value
from .enums import EnumValue
from .lists import ByteArray, List, Tuple, _new
from .prefix import WeakRef, register_collection_kind, register_converter

__all__ = ["List", "Dict", "Set", "Tuple", "ByteArray", "list", "dict", "set", "tuple",
           "bytearray", "hash", "is_collection"]

_builtin_list = list
_builtin_dict = dict
_builtin_set = set
_builtin_tuple = tuple
_builtin_bytes = bytes

_chunks.configure(chunk_cache, WeakRef, errors.ReferenceError, errors.ObjectClosedError,
                  errors.UnsupportedTypeError, errors.FormatError, EnumValue)

for _cls in (List, Dict, Set, Tuple, ByteArray):
    register_collection_kind(_cls._db0_kind, _cls)
del _cls


def _convert_list(px, value):
    return _new(List, px, value, 1)


def _convert_tuple(px, value):
    return _new(Tuple, px, value, 1)


def _convert_dict(px, value):
    pairs = _builtin_list(value.items())
    for k, v in pairs:
        check_key(px, k)
        check_value(px, v)
    return _new_dict(px, pairs, 1)


def _convert_set(px, value):
    items = _builtin_list(value)
    for k in items:
        check_key(px, k)
    return _new_set(px, items, 1)


register_converter(_builtin_list, _convert_list)
register_converter(_builtin_tuple, _convert_tuple)
register_converter(_builtin_dict, _convert_dict)
register_converter(_builtin_set, _convert_set)

# The public constructors: ``db0.list(...)`` is the class itself, so ``isinstance(x, db0.list)``
# works too.  (Inside this module the builtins stay reachable as _builtin_*.)
list = List  # noqa: A001
dict = Dict  # noqa: A001
set = Set  # noqa: A001
tuple = Tuple  # noqa: A001
bytearray = ByteArray  # noqa: A001


def is_collection(obj: Any) -> bool:
    """True for db0 collections (List, Dict, Set, Tuple, ByteArray, ...)."""
    return isinstance(obj, _chunks.CollectionBase)


def _hash_form(obj: Any) -> Any:
    """A value that ``stable_hash`` accepts and that is equal for equal collections."""
    if isinstance(obj, (Tuple, List)):
        return _builtin_tuple(_hash_form(x) for x in obj)
    if isinstance(obj, ByteArray):
        return _builtin_bytes(obj)
    if isinstance(obj, (Set, _builtin_set)):
        return ("db0.set", _builtin_tuple(sorted(_ekey(x) for x in obj)))
    if isinstance(obj, (Dict, _builtin_dict)):
        return ("db0.dict", _builtin_tuple(sorted((_ekey(k), hash(v)) for k, v in obj.items())))
    if type(obj) is _builtin_tuple or type(obj) is _builtin_list:
        return _builtin_tuple(_hash_form(x) for x in obj)
    return obj


def _ekey(value):
    from dbzero_ext.keys import encode_key
    return encode_key(_hash_form(value), _chunks.key_fallback)


def hash(obj: Any) -> int:  # noqa: A001 - exported as db0.hash
    """A deterministic 64-bit hash, identical across processes (the hash db0 keys use).

    Small non-negative ints hash to themselves, ``hash("x") == hash(b"x")``, equal numbers
    hash equally (``1``, ``1.0``, ``True``), a Tuple hashes like the equal tuple, memo
    objects and enum values by identity.  Raises UnsupportedTypeError (a TypeError and a
    RuntimeError) for values dbzero cannot store or compare, e.g. frozenset.
    """
    form = _hash_form(obj)
    try:
        return _stable_hash(form, _chunks.key_fallback)
    except TypeError:
        raise errors.UnsupportedTypeError(f"Type unsupported by dbzero: {type(obj).__name__}") from None
