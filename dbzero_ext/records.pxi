# Included by core.pyx: a msgpack reader specialised for object records.
#
# A memo record is the msgpack array [class_id, refcount, slot...] written by
# dbzero_ext.codec.Codec.pack.  Reading it here, straight into the instance dict, skips
# the intermediate list and msgpack.unpackb's keyword handling.  Anything this reader does
# not decode itself (ext records: tuples, dates, references, ...) goes to the codec's
# ext hook, exactly as msgpack would call it.

from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcpy

cdef class _Reader:
    cdef const unsigned char* buf
    cdef Py_ssize_t pos, end
    cdef object owner       # keeps the bytes alive
    cdef object ext_hook
    cdef unsigned long long wstate    # the record's write state (0 if not in front of it)


cdef inline unsigned long long _be(const unsigned char* p, int n):
    cdef unsigned long long v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef inline const unsigned char* _take(_Reader r, Py_ssize_t n) except NULL:
    cdef const unsigned char* p = r.buf + r.pos
    if n < 0 or r.pos + n > r.end:
        raise ValueError("truncated record")
    r.pos += n
    return p


cdef object _read_value(_Reader r):
    cdef const unsigned char* p = _take(r, 1)
    cdef unsigned char b = p[0]
    cdef Py_ssize_t n
    cdef unsigned long long u
    cdef double d
    cdef float f
    cdef unsigned int u32
    cdef int code
    if b <= 0x7f:
        return <long>b
    if b >= 0xe0:
        return <long>(<signed char>b)
    if 0xa0 <= b <= 0xbf:
        n = b & 0x1f
        return PyUnicode_DecodeUTF8(<const char*>_take(r, n), n, NULL)
    if 0x90 <= b <= 0x9f:
        return _read_array(r, b & 0x0f)
    if 0x80 <= b <= 0x8f:
        return _read_map(r, b & 0x0f)
    if b == 0xc0:
        return None
    if b == 0xc2:
        return False
    if b == 0xc3:
        return True
    if b == 0xcb:
        u = _be(_take(r, 8), 8)
        memcpy(&d, &u, 8)
        return d
    if b == 0xca:
        u32 = <unsigned int>_be(_take(r, 4), 4)
        memcpy(&f, &u32, 4)
        return <double>f
    if b == 0xcc:
        return <long>_be(_take(r, 1), 1)
    if b == 0xcd:
        return <long>_be(_take(r, 2), 2)
    if b == 0xce:
        return <long long>_be(_take(r, 4), 4)
    if b == 0xcf:
        return _be(_take(r, 8), 8)
    if b == 0xd0:
        return <long>(<signed char>_be(_take(r, 1), 1))
    if b == 0xd1:
        return <long>(<short>_be(_take(r, 2), 2))
    if b == 0xd2:
        return <long>(<int>_be(_take(r, 4), 4))
    if b == 0xd3:
        return <long long>_be(_take(r, 8), 8)
    if b == 0xd9 or b == 0xda or b == 0xdb:
        n = <Py_ssize_t>_be(_take(r, 1 << (b - 0xd9)), 1 << (b - 0xd9))
        return PyUnicode_DecodeUTF8(<const char*>_take(r, n), n, NULL)
    if b == 0xc4 or b == 0xc5 or b == 0xc6:
        n = <Py_ssize_t>_be(_take(r, 1 << (b - 0xc4)), 1 << (b - 0xc4))
        return PyBytes_FromStringAndSize(<const char*>_take(r, n), n)
    if b == 0xdc or b == 0xdd:
        return _read_array(r, <Py_ssize_t>_be(_take(r, 2 if b == 0xdc else 4), 2 if b == 0xdc else 4))
    if b == 0xde or b == 0xdf:
        return _read_map(r, <Py_ssize_t>_be(_take(r, 2 if b == 0xde else 4), 2 if b == 0xde else 4))
    if 0xd4 <= b <= 0xd8:
        n = 1 << (b - 0xd4)
    elif b == 0xc7 or b == 0xc8 or b == 0xc9:
        n = <Py_ssize_t>_be(_take(r, 1 << (b - 0xc7)), 1 << (b - 0xc7))
    else:
        raise ValueError(f"unsupported msgpack byte 0x{b:02x} in record")
    code = <signed char>_take(r, 1)[0]
    if code == 13 and n == 0:
        return _ABSENT
    return r.ext_hook(code, PyBytes_FromStringAndSize(<const char*>_take(r, n), n))


cdef list _read_array(_Reader r, Py_ssize_t n):
    cdef list out = []
    cdef Py_ssize_t i
    for i in range(n):
        out.append(_read_value(r))
    return out


cdef dict _read_map(_Reader r, Py_ssize_t n):
    cdef dict out = {}
    cdef Py_ssize_t i
    for i in range(n):
        k = _read_value(r)
        out[k] = _read_value(r)
    return out


cdef Py_ssize_t _read_array_header(_Reader r) except -1:
    cdef unsigned char b = _take(r, 1)[0]
    if 0x90 <= b <= 0x9f:
        return b & 0x0f
    if b == 0xdc:
        return <Py_ssize_t>_be(_take(r, 2), 2)
    if b == 0xdd:
        return <Py_ssize_t>_be(_take(r, 4), 4)
    raise ValueError("object record is not an array")


cdef _Reader _reader(bytes raw, Py_ssize_t offset, ext_hook):
    cdef _Reader r = _Reader.__new__(_Reader)
    r.owner = raw
    r.buf = <const unsigned char*>PyBytes_AS_STRING(raw)
    r.pos = offset
    r.end = PyBytes_GET_SIZE(raw)
    r.ext_hook = ext_hook
    r.wstate = _be(r.buf, 8) if offset == 8 and r.end >= 8 else 0
    return r


def read_record(bytes raw, Py_ssize_t offset, ext_hook):
    """The record in ``raw[offset:]`` as a list (for tests and tools)."""
    cdef _Reader r = _reader(raw, offset, ext_hook)
    return _read_array(r, _read_array_header(r))


# -- writing records ----------------------------------------------------------------------
# The writer emits the same bytes msgpack's Packer would (smallest int/str/bin forms, float
# as float 64), so records written here and by the codec are interchangeable.  Values it
# does not encode itself (tuples, dates, references, big ints, ...) are packed by the
# codec and copied in.

from libc.stdlib cimport realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

cdef char* _wbuf = NULL        # one growing buffer, reused (callers hold the workspace lock)
cdef Py_ssize_t _wcap = 0
cdef Py_ssize_t _wlen = 0


cdef int _reserve(Py_ssize_t n) except -1:
    global _wbuf, _wcap
    cdef Py_ssize_t cap
    cdef char* grown
    if _wlen + n <= _wcap:
        return 0
    cap = max(2 * _wcap, _wlen + n, 256)
    grown = <char*>realloc(_wbuf, cap)
    if grown == NULL:
        raise MemoryError()
    _wbuf = grown
    _wcap = cap
    return 0


cdef inline int _put_header(unsigned char tag, unsigned long long v, int n) except -1:
    global _wlen
    cdef int i
    _reserve(1 + n)
    _wbuf[_wlen] = <char>tag
    for i in range(n):
        _wbuf[_wlen + 1 + i] = <char>((v >> (8 * (n - 1 - i))) & 0xFF)
    _wlen += 1 + n
    return 0


cdef inline int _put_raw(const char* p, Py_ssize_t n) except -1:
    global _wlen
    _reserve(n)
    memcpy(_wbuf + _wlen, p, n)
    _wlen += n
    return 0


cdef int _put_sized(unsigned char small, Py_ssize_t small_limit, unsigned char b8,
                    Py_ssize_t n) except -1:
    if small and n < small_limit:
        return _put_header(small | n, 0, 0)
    if b8 and n < 256:
        return _put_header(b8, n, 1)
    if n < 65536:
        return _put_header(b8 + 1, n, 2)
    return _put_header(b8 + 2, n, 4)


cdef int _write_int(long long i) except -1:
    if i >= 0:
        if i < 0x80:
            return _put_header(<unsigned char>i, 0, 0)
        if i <= 0xff:
            return _put_header(0xcc, i, 1)
        if i <= 0xffff:
            return _put_header(0xcd, i, 2)
        if i <= 0xffffffff:
            return _put_header(0xce, i, 4)
        return _put_header(0xcf, i, 8)
    if i >= -32:
        return _put_header(<unsigned char>(<signed char>i), 0, 0)
    if i >= -128:
        return _put_header(0xd0, <unsigned long long>i & 0xff, 1)
    if i >= -32768:
        return _put_header(0xd1, <unsigned long long>i & 0xffff, 2)
    if i >= -2147483648:
        return _put_header(0xd2, <unsigned long long>i & 0xffffffff, 4)
    return _put_header(0xd3, <unsigned long long>i, 8)


cdef int _write_value(object v, object pack) except -1:
    cdef type t = type(v)
    cdef int overflow = 0
    cdef long long i
    cdef double d
    cdef unsigned long long bits
    cdef const char* p
    cdef Py_ssize_t n
    if v is None:
        return _put_header(0xc0, 0, 0)
    if t is bool:
        return _put_header(0xc3 if v else 0xc2, 0, 0)
    if t is int:
        i = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0:
            return _write_int(i)
    elif t is float:
        d = v
        memcpy(&bits, &d, 8)
        return _put_header(0xcb, bits, 8)
    elif t is str:
        p = PyUnicode_AsUTF8AndSize(v, &n)
        _put_sized(0xa0, 32, 0xd9, n)
        return _put_raw(p, n)
    elif t is bytes:
        n = PyBytes_GET_SIZE(v)
        _put_sized(0, 0, 0xc4, n)
        return _put_raw(PyBytes_AS_STRING(v), n)
    elif v is _ABSENT:
        return _put_raw(b"\xc7\x00\x0d", 3)
    packed = pack(v)
    return _put_raw(PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed))


cdef bytes _pack_record(MemoBase obj, ClassInfo info, object pack, bytes prefix=None):
    """``msgpack([class_id, refcount, slot...])`` of a memo object (trailing absent slots
    dropped), after ``prefix`` if given; field names not in the class layout yet extend it."""
    global _wlen
    cdef dict d = _dict_of(obj)
    cdef dict index = info.field_index
    cdef list fields
    cdef PyObject* found
    cdef Py_ssize_t idx, top = -1, k
    # The record is written after whatever the buffer holds: the codec fallback runs Python
    # code, which could pack another record before this one is finished.
    cdef Py_ssize_t start = _wlen
    for name in d:
        found = PyDict_GetItem(index, name)
        idx = <Py_ssize_t><object>found if found is not NULL else info.slot_of(name)
        if idx > top:
            top = idx
    fields = info.fields
    try:
        if prefix is not None:
            _put_raw(PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
        k = top + 3
        if k < 16:
            _put_header(0x90 | k, 0, 0)
        elif k < 65536:
            _put_header(0xdc, k, 2)
        else:
            _put_header(0xdd, k, 4)
        _write_value(info.class_id, pack)
        _write_value(obj._rc, pack)
        for idx in range(top + 1):
            found = PyDict_GetItem(d, fields[idx])
            if found is NULL:
                _put_raw(b"\xc7\x00\x0d", 3)
            else:
                _write_value(<object>found, pack)
        return PyBytes_FromStringAndSize(_wbuf + start, _wlen - start)
    finally:
        _wlen = start


def pack_record(MemoBase obj, ClassInfo info, pack):
    """The stored record of ``obj`` (for tests and tools)."""
    return _pack_record(obj, info, pack)


# -- reference counts of records that were not loaded -----------------------------------

cdef long long _read_int(_Reader r) except? -1:
    """A msgpack integer that fits in 64 signed bits (a reference count)."""
    cdef unsigned char b = _take(r, 1)[0]
    if b <= 0x7f:
        return b
    if b >= 0xe0:
        return <signed char>b
    if 0xcc <= b <= 0xcf:
        return <long long>_be(_take(r, 1 << (b - 0xcc)), 1 << (b - 0xcc))
    if b == 0xd0:
        return <signed char>_be(_take(r, 1), 1)
    if b == 0xd1:
        return <short>_be(_take(r, 2), 2)
    if b == 0xd2:
        return <int>_be(_take(r, 4), 4)
    if b == 0xd3:
        return <long long>_be(_take(r, 8), 8)
    raise ValueError(f"reference count is not an integer (msgpack byte 0x{b:02x})")


cdef bytes _add_to_refcount(bytes old, long long delta):
    """The versioned object value ``old`` (write state + record) with ``delta`` added to
    its reference count; every other byte, the write state included, is kept."""
    global _wlen
    cdef _Reader r = _reader(old, 8, None)
    _read_array_header(r)
    _read_int(r)                    # class id
    cdef Py_ssize_t at = r.pos
    cdef long long rc = _read_int(r) + delta
    cdef Py_ssize_t start = _wlen
    try:
        _put_raw(<const char*>r.buf, at)
        _write_int(rc)
        _put_raw(<const char*>r.buf + r.pos, r.end - r.pos)
        return PyBytes_FromStringAndSize(_wbuf + start, _wlen - start)
    finally:
        _wlen = start


def add_to_refcounts(list olds, list deltas):
    """``[(key, new value)]`` for the ``(key, delta)`` pairs ``deltas``: each stored value
    of ``olds`` (``[(key, value)]`` in the same key order, as Cursor.getmulti returns them)
    with its delta added to the record's reference count.  A key without a stored value
    is skipped: its object was deleted, and the count with it."""
    cdef list out = []
    cdef Py_ssize_t i = 0, n = len(olds)
    cdef tuple pair
    for key, delta in deltas:
        if i < n:
            pair = <tuple>olds[i]
            if pair[0] == key:
                out.append((key, _add_to_refcount(<bytes>pair[1], delta)))
                i += 1
    return out
