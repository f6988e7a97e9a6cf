# cython: language_level=3
"""Value codec: msgpack plus extension types for what msgpack lacks.

A stored value is plain msgpack where msgpack has a native form (None, bool, 64-bit int,
float, str, bytes, list, map) and a msgpack *ext* record otherwise.  The ext codes are part
of the storage format (docs/format.md) and never change meaning:

====  ===========  =====================================================================
code  name         payload
====  ===========  =====================================================================
1     TUPLE        msgpack array of the items (tuples used as dict keys / inside keys)
2     DATETIME     msgpack [y, mo, d, h, mi, s, us, utcoffset_seconds|nil, fold]
3     DATE         msgpack [y, mo, d]
4     TIME         msgpack [h, mi, s, us, utcoffset_seconds|nil, fold]
5     TIMEDELTA    msgpack [days, seconds, microseconds]
6     DECIMAL      ASCII text of the Decimal (exact, any precision, keeps the exponent)
7     UUID         16 raw bytes
8     BIGINT       signed big-endian two's complement bytes (ints outside int64)
9     REF          8-byte oid + 4-byte class id [+ 7-byte prefix uuid when foreign]
10    ENUM         msgpack [enum type name, value name]
11    PYCLASS      UTF-8 "module:qualname" of a stored Python class
12    FUNCTION     UTF-8 "module:qualname" of a module-level function
13    ABSENT       empty: a slot with no value (deleted attribute)
14    WEAKREF      like REF, but does not keep the target alive
====  ===========  =====================================================================

The codec does not know about prefixes: references go through two callbacks supplied by
the owner (``ref_of`` turns an object into REF/WEAKREF payload, ``resolve`` turns a payload
back into an object).
"""

import datetime as _dt
import decimal as _decimal
import importlib
import uuid as _uuid

import msgpack
from msgpack import ExtType

cdef int X_TUPLE = 1
cdef int X_DATETIME = 2
cdef int X_DATE = 3
cdef int X_TIME = 4
cdef int X_TIMEDELTA = 5
cdef int X_DECIMAL = 6
cdef int X_UUID = 7
cdef int X_BIGINT = 8
cdef int X_REF = 9
cdef int X_ENUM = 10
cdef int X_PYCLASS = 11
cdef int X_FUNCTION = 12
cdef int X_ABSENT = 13
cdef int X_WEAKREF = 14

EXT_CODES = {
    "TUPLE": X_TUPLE, "DATETIME": X_DATETIME, "DATE": X_DATE, "TIME": X_TIME,
    "TIMEDELTA": X_TIMEDELTA, "DECIMAL": X_DECIMAL, "UUID": X_UUID, "BIGINT": X_BIGINT,
    "REF": X_REF, "ENUM": X_ENUM, "PYCLASS": X_PYCLASS, "FUNCTION": X_FUNCTION,
    "ABSENT": X_ABSENT, "WEAKREF": X_WEAKREF,
}


class _AbsentType:
    """Marker for a slot that holds no value."""
    __slots__ = ()
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self):
        return "ABSENT"

    def __reduce__(self):
        return (_AbsentType, ())


ABSENT = _AbsentType()
_ABSENT_EXT = ExtType(X_ABSENT, b"")

_UTC = _dt.timezone.utc
_tz_cache = {}


cdef object _offset_seconds(object value):
    off = value.utcoffset()
    if off is None:
        return None
    secs = off.days * 86400 + off.seconds
    return secs + off.microseconds / 1e6 if off.microseconds else secs


cdef object _tz_from(object seconds):
    if seconds is None:
        return None
    tz = _tz_cache.get(seconds)
    if tz is None:
        tz = _UTC if seconds == 0 else _dt.timezone(_dt.timedelta(seconds=seconds))
        _tz_cache[seconds] = tz
    return tz


def qualified_name(obj):
    """``module:qualname`` of a class or function, validated to be importable by name."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def import_qualified(text):
    module, _, qualname = text.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


cdef class Codec:
    """Packs and unpacks values for one owner (a prefix or a snapshot view)."""

    cdef object _packer
    cdef public object ref_of       # obj -> (code, payload bytes) or None if not a reference
    cdef public object resolve      # (code, payload) -> object
    cdef public object enum_of      # obj -> (type name, value name) or None
    cdef public object enum_value   # (type name, value name) -> enum value

    def __init__(self, ref_of, resolve, enum_of, enum_value):
        self.ref_of = ref_of
        self.resolve = resolve
        self.enum_of = enum_of
        self.enum_value = enum_value
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True,
                                      strict_types=True, autoreset=True, datetime=False)

    cpdef bytes pack(self, object value):
        return self._packer.pack(value)

    cpdef object unpack(self, bytes data):
        return msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False,
                               strict_map_key=False, use_list=True)

    def _default(self, value):
        cdef type t = type(value)
        if t is tuple:
            # A fresh packer: the shared one is in the middle of packing the outer value.
            return ExtType(X_TUPLE, msgpack.packb(list(value), default=self._default, use_bin_type=True,
                                                  strict_types=True, datetime=False))
        if t is int:
            n = (value.bit_length() + 8) // 8
            return ExtType(X_BIGINT, value.to_bytes(n, "big", signed=True))
        if t is _dt.datetime:
            return ExtType(X_DATETIME, msgpack.packb([
                value.year, value.month, value.day, value.hour, value.minute, value.second,
                value.microsecond, _offset_seconds(value), value.fold]))
        if t is _dt.date:
            return ExtType(X_DATE, msgpack.packb([value.year, value.month, value.day]))
        if t is _dt.time:
            return ExtType(X_TIME, msgpack.packb([
                value.hour, value.minute, value.second, value.microsecond,
                _offset_seconds(value), value.fold]))
        if t is _dt.timedelta:
            return ExtType(X_TIMEDELTA, msgpack.packb([value.days, value.seconds, value.microseconds]))
        if t is _decimal.Decimal:
            return ExtType(X_DECIMAL, str(value).encode("ascii"))
        if t is _uuid.UUID:
            return ExtType(X_UUID, value.bytes)
        if value is ABSENT:
            return _ABSENT_EXT
        ref = self.ref_of(value)
        if ref is not None:
            return ExtType(ref[0], ref[1])
        en = self.enum_of(value)
        if en is not None:
            return ExtType(X_ENUM, msgpack.packb(list(en)))
        if isinstance(value, type):
            name = qualified_name(value)
            if name is not None:
                return ExtType(X_PYCLASS, name.encode())
        if t.__name__ == "function":
            if value.__name__ == "<lambda>":
                raise AttributeError("Lambda functions are not allowed as CALLABLE members")
            name = qualified_name(value)
            if name is not None:
                return ExtType(X_FUNCTION, name.encode())
        raise TypeError(f"Type unsupported by dbzero: {t.__name__}")

    def _ext_hook(self, int code, bytes data):
        if code == X_TUPLE:
            return tuple(self.unpack(data))
        if code == X_REF or code == X_WEAKREF:
            return self.resolve(code, data)
        if code == X_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == X_DATETIME:
            y, mo, d, h, mi, s, us, off, fold = msgpack.unpackb(data)
            return _dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz_from(off), fold=fold)
        if code == X_DATE:
            y, mo, d = msgpack.unpackb(data)
            return _dt.date(y, mo, d)
        if code == X_TIME:
            h, mi, s, us, off, fold = msgpack.unpackb(data)
            return _dt.time(h, mi, s, us, tzinfo=_tz_from(off), fold=fold)
        if code == X_TIMEDELTA:
            d, s, us = msgpack.unpackb(data)
            return _dt.timedelta(days=d, seconds=s, microseconds=us)
        if code == X_DECIMAL:
            return _decimal.Decimal(data.decode("ascii"))
        if code == X_UUID:
            return _uuid.UUID(bytes=data)
        if code == X_ABSENT:
            return ABSENT
        if code == X_ENUM:
            type_name, value_name = msgpack.unpackb(data)
            return self.enum_value(type_name, value_name)
        if code == X_PYCLASS or code == X_FUNCTION:
            return import_qualified(data.decode())
        return ExtType(code, data)


def has_references(bytes data):
    """Cheap pre-check: could this packed value contain a REF ext record?"""
    return b"\x09" in data


# -- object UUIDs ---------------------------------------------------------------------
# A UUID is RFC 4648 base32 (A-Z, 2-7) of prefix uuid (7 bytes) + object id (8 bytes BE):
# 120 bits, exactly 24 characters, no padding.

cdef bytes _B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
cdef signed char _B32_VALUE[256]
for _i in range(256):
    _B32_VALUE[_i] = -1
for _i, _c in enumerate(_B32):
    _B32_VALUE[_c] = _i


def encode_uuid(bytes prefix_uuid, unsigned long long oid):
    """24-character id of object ``oid`` in the prefix with id ``prefix_uuid`` (7 bytes)."""
    cdef unsigned char raw[15]
    cdef char out[24]
    cdef int i, bit, idx, value
    if len(prefix_uuid) != 7:
        raise ValueError("prefix uuid must be 7 bytes")
    for i in range(7):
        raw[i] = prefix_uuid[i]
    for i in range(8):
        raw[7 + i] = (oid >> (56 - 8 * i)) & 0xFF
    for i in range(24):
        bit = i * 5
        idx = bit >> 3
        value = (raw[idx] << 8) | (raw[idx + 1] if idx + 1 < 15 else 0)
        out[i] = _B32[(value >> (11 - (bit & 7))) & 31]
    return out[:24].decode("ascii")


def decode_uuid(str text):
    """(prefix uuid bytes, object id) of a UUID string; ValueError if malformed."""
    cdef unsigned char raw[15]
    cdef int i, v, bit, idx
    cdef unsigned long long oid = 0
    cdef bytes data
    if len(text) != 24:
        raise ValueError("a dbzero UUID has 24 characters")
    data = text.encode("ascii", "replace")
    for i in range(15):
        raw[i] = 0
    for i in range(24):
        v = _B32_VALUE[<unsigned char>data[i]]
        if v < 0:
            raise ValueError(f"invalid character {text[i]!r} in UUID")
        bit = i * 5
        idx = bit >> 3
        # place 5 bits starting at bit offset `bit` (big-endian bit order)
        if (bit & 7) <= 3:
            raw[idx] |= v << (3 - (bit & 7))
        else:
            raw[idx] |= v >> ((bit & 7) - 3)
            raw[idx + 1] |= (v << (11 - (bit & 7))) & 0xFF
    for i in range(8):
        oid = (oid << 8) | raw[7 + i]
    return bytes(raw[:7]), oid
