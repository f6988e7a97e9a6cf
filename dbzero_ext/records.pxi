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
    return r


def read_record(bytes raw, Py_ssize_t offset, ext_hook):
    """The record in ``raw[offset:]`` as a list (for tests and tools)."""
    cdef _Reader r = _reader(raw, offset, ext_hook)
    return _read_array(r, _read_array_header(r))
