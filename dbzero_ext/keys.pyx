# cython: language_level=3
"""Order-preserving, canonical key encoding for LMDB keys.

Used for the keys of persistent dicts/sets and for range indexes. Two
guarantees:

* canonical: values that are equal (and hash-equal) in Python encode to the
  same bytes -- ``1``, ``1.0``, ``True`` and ``Decimal("1.00")`` collapse just
  like they do as dict keys -- and values that differ encode differently;
* order-preserving: within one kind, byte order equals Python order. The first
  byte is a kind tag, so mixed kinds sort by kind.

Layout (tag byte, then payload)::

    0x05  None
    0x20  -inf
    0x21  negative finite number  bytes of |v| (see below), all inverted
    0x22  zero (0, 0.0, -0.0, False, Decimal("-0E+3"), ...)
    0x23  positive finite number  exponent, mantissa
    0x24  +inf
    0x25  NaN (float or Decimal, quiet or signalling): one value above +inf
    0x30  str             UTF-8 (surrogatepass), escaped
    0x40  bytes           escaped
    0x50  date            year:u16 month:u8 day:u8
    0x51  datetime naive  year:u16 month day hour minute second:u8 us:u24
    0x52  datetime aware  UTC instant: us since 0001-01-01T00:00Z + 1 day, u64
    0x53  time naive      hour minute second:u8 us:u24
    0x54  time aware      time - utcoffset in us, + 24 h, u48
    0x60  tuple           element encodings back to back, then 0x00
    0x70  extension       fallback(value) bytes, escaped

Numbers: every finite non-zero number is written as
``|v| = 0.d1 d2 d3 ... * 10**E`` with ``d1 != 0`` and no trailing zeros, so
the representation is independent of the Python type. ``E`` is one byte
``0x80 + E`` for ``-64 <= E < 64``; ``0xC0 + n`` followed by ``E - 64`` as n
big-endian bytes when larger; ``0x40 - n`` followed by the n-byte complement of
``-E - 65`` when smaller. Digits are packed in pairs ``X`` (0..99) as ``2X + 1``
with the last pair as ``2X``, so the mantissa ends itself and a shorter digit
string sorts before a longer one with the same start. Floats are converted
exactly (``Decimal(float)``), never through their repr.

Escaped byte strings: ``0x00`` becomes ``0x00 0xFF`` and ``0x00 0x00``
terminates, so an escaped string sorts before every extension of itself even
when more key bytes follow (tuples). UTF-8 byte order equals code point order,
which is how Python compares str.

Every encoding is self-delimiting and no tag is 0x00, which is what makes the
plain concatenation in tuples compare element-wise, and the 0x00 tuple
terminator sort a tuple before any longer tuple it is a prefix of.

Long keys: LMDB caps keys at 511 bytes. An encoding longer than ``MAX_KEY``
(480) bytes is replaced by its first 448 bytes, a 0xFF marker and a 16-byte
blake2b digest of the full encoding (465 bytes in total). Such keys still sort
correctly against any key that differs within the first 448 bytes; among keys
sharing those 448 bytes the order is by digest, i.e. arbitrary. An unhashed
encoding of exactly 465 bytes is hashed as well, so a hashed key can never be
equal to some other value's verbatim encoding and ``decode_key`` can tell them
apart by length alone.

Known gaps: aware datetimes are keyed by their UTC instant (via
``utcoffset()``, which honours ``fold``), whereas Python compares two datetimes
sharing one tzinfo by wall time -- two wall-clock-equal times on either side of
a DST fold are equal in Python but get different keys here. Aware times honour
sub-second UTC offsets exactly, which CPython's own time comparison ignores.
Fractions are supported only when their decimal expansion terminates (others
go to the fallback); memoryview and numpy.bool_ are not collapsed with
bytes/bool.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.datetime cimport (
    PyDate_Check, PyDateTime_Check, PyTime_Check, date_day, date_month, date_year,
    datetime_day, datetime_hour, datetime_microsecond, datetime_minute, datetime_month,
    datetime_second, datetime_tzinfo, datetime_year, import_datetime, time_hour,
    time_microsecond, time_minute, time_second, time_tzinfo, timedelta_days,
    timedelta_microseconds, timedelta_seconds,
)
from cpython.float cimport PyFloat_AsDouble
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_AsEncodedString, PyUnicode_AsUTF8AndSize
from libc.math cimport fabs, floor, frexp, isinf, isnan, ldexp
from libc.stdlib cimport free, malloc, realloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memchr, memcpy, memset

import numbers
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)

import_datetime()

__all__ = ["MAX_KEY", "ExtensionKey", "decode_key", "encode_key", "stable_hash"]

MAX_KEY = 480

cdef enum:
    C_MAX_KEY = 480
    HASH_PREFIX = 448
    HASHED_LEN = 465           # HASH_PREFIX + marker + 16-byte digest
    HASH_MARKER = 0xFF
    INLINE_CAP = 512           # every key that is not hashed fits without malloc
    MAX_DEPTH = 256            # deeper tuples would exceed MAX_KEY anyway

    TAG_NONE = 0x05
    TAG_NINF = 0x20
    TAG_NEG = 0x21
    TAG_ZERO = 0x22
    TAG_POS = 0x23
    TAG_PINF = 0x24
    TAG_NAN = 0x25
    TAG_STR = 0x30
    TAG_BYTES = 0x40
    TAG_DATE = 0x50
    TAG_DATETIME = 0x51
    TAG_DATETIME_TZ = 0x52
    TAG_TIME = 0x53
    TAG_TIME_TZ = 0x54
    TAG_TUPLE = 0x60
    TAG_EXT = 0x70
    TUPLE_END = 0x00

cdef long long US_PER_DAY = 86400000000LL
# Hashed values get the top bit, so they never equal a small int's own hash.
cdef unsigned long long HASH_TOP_BIT = 1ULL << 63
cdef int[13] DAYS_BEFORE_MONTH = [0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334]

cdef const unsigned char* PERSON_CONTENT = b"dbzero.content\0\0"
cdef const unsigned char* PERSON_KEY = b"dbzero.key\0\0\0\0\0\0"


# --------------------------------------------------------------------------
# BLAKE2b (RFC 7693), unkeyed, with personalisation. Done in C because
# constructing hashlib.blake2b costs ~10x the hashing of a short key.
# Output is identical to hashlib.blake2b(data, digest_size=..., person=...).

cdef uint64_t[8] B2_IV = [
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
]

cdef unsigned char[192] B2_SIGMA = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
    11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4,
    7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8,
    9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13,
    2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9,
    12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11,
    13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10,
    6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5,
    10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
]


cdef inline uint64_t load64(const unsigned char* p) noexcept nogil:
    return (<uint64_t>p[0] | <uint64_t>p[1] << 8 | <uint64_t>p[2] << 16
            | <uint64_t>p[3] << 24 | <uint64_t>p[4] << 32 | <uint64_t>p[5] << 40
            | <uint64_t>p[6] << 48 | <uint64_t>p[7] << 56)


cdef inline uint64_t rotr64(uint64_t x, int n) noexcept nogil:
    return (x >> n) | (x << (64 - n))


cdef inline void b2_g(uint64_t* v, int a, int b, int c, int d,
                      uint64_t x, uint64_t y) noexcept nogil:
    v[a] = v[a] + v[b] + x
    v[d] = rotr64(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = rotr64(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = rotr64(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = rotr64(v[b] ^ v[c], 63)


cdef void b2_compress(uint64_t* h, const unsigned char* block, uint64_t t,
                      bint last) noexcept nogil:
    cdef uint64_t v[16]
    cdef uint64_t m[16]
    cdef const unsigned char* s
    cdef int i, r
    for i in range(16):
        m[i] = load64(block + 8 * i)
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = B2_IV[i]
    v[12] ^= t
    if last:
        v[14] = ~v[14]
    for r in range(12):
        s = B2_SIGMA + 16 * r
        b2_g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        b2_g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        b2_g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        b2_g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        b2_g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        b2_g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        b2_g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        b2_g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


cdef void blake2b_c(const unsigned char* data, Py_ssize_t n, int outlen,
                    const unsigned char* person, unsigned char* out) noexcept nogil:
    """BLAKE2b of data[:n] into out[:outlen] (outlen <= 64); person: 16 bytes or NULL."""
    cdef uint64_t h[8]
    cdef unsigned char block[128]
    cdef uint64_t t = 0
    cdef int i
    for i in range(8):
        h[i] = B2_IV[i]
    h[0] ^= 0x01010000ULL | <uint64_t>outlen
    if person != NULL:
        h[6] ^= load64(person)
        h[7] ^= load64(person + 8)
    while n > 128:
        t += 128
        b2_compress(h, data, t, False)
        data += 128
        n -= 128
    memset(block, 0, 128)
    memcpy(block, data, n)
    t += n
    b2_compress(h, block, t, True)
    for i in range(outlen):
        out[i] = <unsigned char>(h[i >> 3] >> (8 * (i & 7)))


cdef object hash64(const unsigned char* data, Py_ssize_t n, const unsigned char* person):
    cdef unsigned char d[8]
    cdef uint64_t v = 0
    cdef int i
    blake2b_c(data, n, 8, person, d)
    for i in range(8):
        v = (v << 8) | d[i]  # digest read big-endian
    return v | HASH_TOP_BIT


# --------------------------------------------------------------------------
# growable output buffer (inline storage first, so ordinary keys never malloc)

ctypedef struct Buf:
    unsigned char* data
    Py_ssize_t len
    Py_ssize_t cap
    unsigned char inl[INLINE_CAP]


cdef inline void buf_init(Buf* b) noexcept:
    b.data = b.inl
    b.len = 0
    b.cap = INLINE_CAP


cdef inline void buf_free(Buf* b) noexcept:
    if b.data != b.inl:
        free(b.data)
    b.data = b.inl


cdef int buf_grow(Buf* b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef unsigned char* p
    if cap < need:
        cap = need
    if b.data == b.inl:
        p = <unsigned char*>malloc(cap)
        if p != NULL:
            memcpy(p, b.inl, b.len)
    else:
        p = <unsigned char*>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int reserve(Buf* b, Py_ssize_t extra) except -1:
    if b.len + extra > b.cap:
        return buf_grow(b, b.len + extra)
    return 0


cdef inline int put_byte(Buf* b, unsigned char c) except -1:
    if b.len + 1 > b.cap:
        buf_grow(b, b.len + 1)
    b.data[b.len] = c
    b.len += 1
    return 0


cdef inline void put_be(Buf* b, unsigned long long v, int n) noexcept:
    # caller reserved n bytes
    cdef int i
    for i in range(n):
        b.data[b.len + i] = <unsigned char>((v >> (8 * (n - 1 - i))) & 0xFF)
    b.len += n


cdef bytes finish(Buf* b):
    cdef bytes out
    cdef unsigned char* p
    if b.len > C_MAX_KEY or b.len == HASHED_LEN:
        out = PyBytes_FromStringAndSize(NULL, HASHED_LEN)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        memcpy(p, b.data, HASH_PREFIX)
        p[HASH_PREFIX] = HASH_MARKER
        blake2b_c(b.data, b.len, 16, NULL, p + HASH_PREFIX + 1)
        return out
    return PyBytes_FromStringAndSize(<char*>b.data, b.len)


# --------------------------------------------------------------------------
# numbers

cdef inline int nbytes(unsigned long long v) noexcept:
    cdef int n = 1
    while n < 8 and (v >> (8 * n)) != 0:
        n += 1
    return n


cdef int put_digits(Buf* b, bint neg, const unsigned char* d, Py_ssize_t n,
                    long long e) except -1:
    """Write the number (-1)**neg * 0.d[0]d[1]...d[n-1] * 10**e (digits 0..9)."""
    cdef Py_ssize_t start, i
    cdef unsigned long long v
    cdef int k, x
    while n > 0 and d[0] == 0:
        d += 1
        n -= 1
        e -= 1
    while n > 0 and d[n - 1] == 0:
        n -= 1
    if n == 0:
        return put_byte(b, TAG_ZERO)
    reserve(b, 10 + (n + 1) // 2)
    b.data[b.len] = TAG_NEG if neg else TAG_POS
    b.len += 1
    start = b.len
    if -64 <= e < 64:
        b.data[b.len] = <unsigned char>(0x80 + e)
        b.len += 1
    elif e >= 64:
        v = <unsigned long long>(e - 64)
        k = nbytes(v)
        b.data[b.len] = <unsigned char>(0xC0 + k)
        b.len += 1
        put_be(b, v, k)
    else:
        v = <unsigned long long>(-(e + 65))
        k = nbytes(v)
        b.data[b.len] = <unsigned char>(0x40 - k)
        b.len += 1
        put_be(b, ~v, k)
    i = 0
    while i < n:
        x = d[i] * 10
        if i + 1 < n:
            x += d[i + 1]
        i += 2
        b.data[b.len] = <unsigned char>(2 * x + (1 if i < n else 0))
        b.len += 1
    if neg:
        # inverting a self-delimiting code reverses its order
        for i in range(start, b.len):
            b.data[i] = ~b.data[i]
    return 0


cdef int enc_ll(Buf* b, long long v) except -1:
    cdef unsigned char tmp[20]
    cdef int pos = 20
    cdef bint neg = v < 0
    cdef unsigned long long u
    if v == 0:
        return put_byte(b, TAG_ZERO)
    u = (<unsigned long long>(-(v + 1))) + 1 if neg else <unsigned long long>v
    while u:
        pos -= 1
        tmp[pos] = <unsigned char>(u % 10)
        u //= 10
    return put_digits(b, neg, tmp + pos, 20 - pos, 20 - pos)


cdef int enc_parts(Buf* b, object sign, object digits, object exp) except -1:
    """Encode Decimal.as_tuple()-style parts: value = digits * 10**exp."""
    cdef bytes db = bytes(digits)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(db)
    cdef long long e = exp + n
    return put_digits(b, bool(sign), <const unsigned char*>PyBytes_AS_STRING(db), n, e)


cdef int enc_decimal(Buf* b, object d) except -1:
    sign, digits, exp = d.as_tuple()
    if type(exp) is str:
        if exp == "F":
            return put_byte(b, TAG_NINF if sign else TAG_PINF)
        return put_byte(b, TAG_NAN)  # 'n' (NaN) and 'N' (sNaN)
    return enc_parts(b, sign, digits, exp)


cdef int enc_int(Buf* b, object value) except -1:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if not overflow:
        return enc_ll(b, v)
    # Decimal(int) is exact and, unlike str(int), not capped at 4300 digits
    return enc_decimal(b, Decimal(int(value)))


cdef int enc_float(Buf* b, double x) except -1:
    if isnan(x):
        return put_byte(b, TAG_NAN)
    if isinf(x):
        return put_byte(b, TAG_PINF if x > 0 else TAG_NINF)
    if x == floor(x):
        if fabs(x) < 9.2e18:
            return enc_ll(b, <long long>x)  # also maps -0.0 to zero
        return enc_decimal(b, Decimal(x))  # huge integral floats are rare
    return enc_fractional(b, x)


cdef int enc_fractional(Buf* b, double x) except -1:
    """Exact decimal expansion of a finite, non-integral double.

    x = m / 2**k = m * 5**k / 10**k: build m * 5**k in 32-bit limbs, then cut
    it into decimal digits. Same result as Decimal(x), about 10x faster.
    """
    cdef bint neg = x < 0
    cdef int exp2, k, scale, i, nl = 2, nd, j, c
    cdef uint64_t m, cur, rem, mul
    # 2**53 * 5**1074 < 2**2550 (80 limbs, 768 digits) for the smallest subnormal
    cdef uint32_t limbs[84]
    cdef unsigned char chunks[800]
    cdef unsigned char digits[800]
    m = <uint64_t>ldexp(frexp(fabs(x), &exp2), 53)
    k = 53 - exp2
    while not (m & 1):
        m >>= 1
        k -= 1
    scale = k
    limbs[0] = <uint32_t>m
    limbs[1] = <uint32_t>(m >> 32)
    while k > 0:
        c = 13 if k > 13 else k
        k -= c
        mul = 1
        for i in range(c):
            mul *= 5
        cur = 0
        for i in range(nl):
            cur += <uint64_t>limbs[i] * mul
            limbs[i] = <uint32_t>cur
            cur >>= 32
        if cur:
            limbs[nl] = <uint32_t>cur
            nl += 1
    # digits, least significant 9-digit chunk first
    nd = 0
    while nl > 0:
        rem = 0
        for i in range(nl - 1, -1, -1):
            cur = (rem << 32) | limbs[i]
            limbs[i] = <uint32_t>(cur // 1000000000ULL)
            rem = cur % 1000000000ULL
        while nl > 0 and limbs[nl - 1] == 0:
            nl -= 1
        for j in range(9):
            chunks[nd] = <unsigned char>(rem % 10)
            rem //= 10
            nd += 1
    for i in range(nd):
        digits[i] = chunks[nd - 1 - i]
    return put_digits(b, neg, digits, nd, nd - scale)


cdef int enc_fraction(Buf* b, object value) except -1:
    """Encode a terminating rational exactly; return 1 if it does not terminate."""
    num = value.numerator
    den = value.denominator
    cdef long long twos = 0, fives = 0, k
    rest = den
    while rest % 2 == 0:
        rest //= 2
        twos += 1
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest != 1:
        return 1
    k = twos if twos > fives else fives
    pk = <object>k  # a Python int: with a C exponent Cython would use pow() on doubles
    scaled = num * (10 ** pk // den)
    sign, digits, _ = Decimal(scaled).as_tuple()
    enc_parts(b, sign, digits, -k)
    return 0


# --------------------------------------------------------------------------
# str / bytes

cdef int put_escaped(Buf* b, unsigned char tag, const char* p, Py_ssize_t n) except -1:
    cdef const char* q
    cdef Py_ssize_t k
    reserve(b, n + 3)
    b.data[b.len] = tag
    b.len += 1
    while n > 0:
        q = <const char*>memchr(p, 0, n)
        if q == NULL:
            memcpy(b.data + b.len, p, n)
            b.len += n
            break
        k = q - p
        reserve(b, n + 4)
        memcpy(b.data + b.len, p, k)
        b.len += k
        b.data[b.len] = 0x00
        b.data[b.len + 1] = 0xFF
        b.len += 2
        p = q + 1
        n -= k + 1
    reserve(b, 2)
    b.data[b.len] = 0x00
    b.data[b.len + 1] = 0x00
    b.len += 2
    return 0


cdef inline bytes str_utf8(object s):
    # surrogatepass keeps lone surrogates encodable and in code point order
    return PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass")


cdef int enc_str(Buf* b, object s) except -1:
    cdef Py_ssize_t n
    cdef const char* p
    cdef bytes raw
    if PyUnicode_IS_ASCII(s):
        p = PyUnicode_AsUTF8AndSize(s, &n)  # no copy for ASCII strings
        return put_escaped(b, TAG_STR, p, n)
    raw = str_utf8(s)
    return put_escaped(b, TAG_STR, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))


cdef inline int enc_bytes(Buf* b, unsigned char tag, bytes raw) except -1:
    return put_escaped(b, tag, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))


# --------------------------------------------------------------------------
# date / datetime / time

cdef inline long long days_before(int y, int m, int d) noexcept:
    """Days from 0001-01-01 to y-m-d (proleptic Gregorian, y >= 1)."""
    cdef long long y1 = y - 1
    cdef long long days = y1 * 365 + y1 // 4 - y1 // 100 + y1 // 400
    days += DAYS_BEFORE_MONTH[m] + d - 1
    if m > 2 and (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        days += 1
    return days


cdef inline long long delta_us(object td):
    return (timedelta_days(td) * US_PER_DAY + timedelta_seconds(td) * 1000000LL
            + timedelta_microseconds(td))


cdef int enc_date(Buf* b, object v) except -1:
    cdef int y = date_year(v)
    reserve(b, 5)
    b.data[b.len] = TAG_DATE
    b.data[b.len + 1] = <unsigned char>(y >> 8)
    b.data[b.len + 2] = <unsigned char>(y & 0xFF)
    b.data[b.len + 3] = <unsigned char>date_month(v)
    b.data[b.len + 4] = <unsigned char>date_day(v)
    b.len += 5
    return 0


cdef int enc_datetime(Buf* b, object v) except -1:
    cdef int y = datetime_year(v)
    cdef long long us
    off = v.utcoffset() if datetime_tzinfo(v) is not None else None
    if off is None:
        reserve(b, 11)
        b.data[b.len] = TAG_DATETIME
        b.data[b.len + 1] = <unsigned char>(y >> 8)
        b.data[b.len + 2] = <unsigned char>(y & 0xFF)
        b.data[b.len + 3] = <unsigned char>datetime_month(v)
        b.data[b.len + 4] = <unsigned char>datetime_day(v)
        b.data[b.len + 5] = <unsigned char>datetime_hour(v)
        b.data[b.len + 6] = <unsigned char>datetime_minute(v)
        b.data[b.len + 7] = <unsigned char>datetime_second(v)
        b.len += 8
        put_be(b, <unsigned long long>datetime_microsecond(v), 3)
        return 0
    # utcoffset is strictly within +-24 h, so one day of bias keeps it unsigned
    us = (days_before(y, datetime_month(v), datetime_day(v)) * 86400LL
          + datetime_hour(v) * 3600LL + datetime_minute(v) * 60LL + datetime_second(v))
    us = us * 1000000LL + datetime_microsecond(v) - delta_us(off) + US_PER_DAY
    reserve(b, 9)
    b.data[b.len] = TAG_DATETIME_TZ
    b.len += 1
    put_be(b, <unsigned long long>us, 8)
    return 0


cdef int enc_time(Buf* b, object v) except -1:
    cdef long long us
    off = v.utcoffset() if time_tzinfo(v) is not None else None
    if off is None:
        reserve(b, 7)
        b.data[b.len] = TAG_TIME
        b.data[b.len + 1] = <unsigned char>time_hour(v)
        b.data[b.len + 2] = <unsigned char>time_minute(v)
        b.data[b.len + 3] = <unsigned char>time_second(v)
        b.len += 4
        put_be(b, <unsigned long long>time_microsecond(v), 3)
        return 0
    # Not wrapped modulo 24 h: Python compares aware times the same way
    # (00:30+01:00 < 23:30+00:00).
    us = ((time_hour(v) * 3600LL + time_minute(v) * 60LL + time_second(v)) * 1000000LL
          + time_microsecond(v) - delta_us(off) + US_PER_DAY)
    reserve(b, 7)
    b.data[b.len] = TAG_TIME_TZ
    b.len += 1
    put_be(b, <unsigned long long>us, 6)
    return 0


# --------------------------------------------------------------------------
# dispatch

cdef int enc_tuple(Buf* b, tuple items, object fallback, int depth) except -1:
    if depth >= MAX_DEPTH:
        raise RecursionError("key tuple nested too deeply")
    put_byte(b, TAG_TUPLE)
    for item in items:
        encode_into(b, item, fallback, depth + 1)
    return put_byte(b, TUPLE_END)


cdef inline int encode_into(Buf* b, object value, object fallback, int depth) except -1:
    cdef type t = type(value)
    if t is int or t is bool:
        return enc_int(b, value)
    if t is str:
        return enc_str(b, value)
    if value is None:
        return put_byte(b, TAG_NONE)
    if t is tuple:
        return enc_tuple(b, <tuple>value, fallback, depth)
    if t is float:
        return enc_float(b, PyFloat_AsDouble(value))
    if t is bytes:
        return enc_bytes(b, TAG_BYTES, <bytes>value)
    return enc_other(b, value, fallback, depth)


cdef int enc_other(Buf* b, object value, object fallback, int depth) except -1:
    # subclasses (IntEnum, namedtuple, ...) and the less common kinds
    if isinstance(value, int):
        return enc_int(b, value)
    if isinstance(value, float):
        return enc_float(b, PyFloat_AsDouble(value))
    if isinstance(value, Decimal):
        return enc_decimal(b, value)
    if isinstance(value, str):
        return enc_str(b, value)
    if isinstance(value, bytes):
        return enc_bytes(b, TAG_BYTES, bytes(value))
    if PyDateTime_Check(value):  # before date: datetime subclasses date
        return enc_datetime(b, value)
    if PyDate_Check(value):
        return enc_date(b, value)
    if PyTime_Check(value):
        return enc_time(b, value)
    if isinstance(value, tuple):
        return enc_tuple(b, <tuple>value, fallback, depth)
    cls = type(value)
    if cls.__hash__ is None:
        raise TypeError(f"unhashable key type: {cls.__name__}")
    # Types that compare and hash equal to ints/floats must collapse with them.
    if isinstance(value, complex):
        if value.imag == 0:
            return enc_float(b, value.real)
    elif isinstance(value, numbers.Integral):
        return enc_int(b, int(value))
    elif isinstance(value, numbers.Rational):
        if enc_fraction(b, value) == 0:
            return 0
    elif isinstance(value, numbers.Real):
        return enc_float(b, float(value))
    if fallback is not None:
        ext = fallback(value)
        if ext is not None:
            if not isinstance(ext, bytes):
                raise TypeError(
                    f"key fallback must return bytes, not {type(ext).__name__}")
            return enc_bytes(b, TAG_EXT, bytes(ext))
    raise TypeError(f"unsupported key type: {cls.__name__}")


def encode_key(object value, object fallback=None) -> bytes:
    """Return the canonical, order-preserving LMDB key for ``value``.

    ``fallback(value) -> bytes | None`` is consulted for values of no built-in
    kind; its bytes must already identify the object (e.g. a 16-byte UUID).
    Raises TypeError for unhashable values and for unsupported ones that the
    fallback does not handle. The result is at most ``MAX_KEY`` bytes.
    """
    cdef Buf b
    buf_init(&b)
    try:
        encode_into(&b, value, fallback, 0)
        return finish(&b)
    finally:
        buf_free(&b)


# --------------------------------------------------------------------------
# stable hash

cdef bint small_int_of_key(bytes key, unsigned long long* out) noexcept:
    """True if ``key`` encodes an integer 0 <= i < 2**63 (stored in ``out``)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key), i
    cdef int e, nd = 0, x, hi, lo
    cdef unsigned long long acc = 0
    if n == 1 and p[0] == TAG_ZERO:
        out[0] = 0
        return True
    if n < 3 or p[0] != TAG_POS or p[1] <= 0x80 or p[1] > 0x80 + 19:
        return False
    e = p[1] - 0x80
    for i in range(2, n):
        x = p[i] >> 1
        hi = x // 10
        lo = x % 10
        nd += 1
        if nd > e:
            return False
        acc = acc * 10 + hi
        if i == n - 1 and lo == 0:
            break  # padding of an odd digit count
        nd += 1
        if nd > e:
            return False
        acc = acc * 10 + lo
    while nd < e:
        acc *= 10
        nd += 1
    if acc >= HASH_TOP_BIT:
        return False
    out[0] = acc
    return True


def stable_hash(object value, object fallback=None) -> int:
    """Deterministic unsigned 64-bit hash, identical across processes and runs.

    Integers 0 <= i < 2**63 -- and every value equal to one, such as ``1.0``,
    ``True`` or ``Decimal("7.00")`` -- hash to themselves. str and bytes hash
    their UTF-8 content, so ``stable_hash("x") == stable_hash(b"x")``.
    Everything else hashes its canonical key (blake2b, 8 bytes). Hashed
    values always have the top bit set, so they never equal a small int's hash.
    """
    cdef int overflow = 0
    cdef long long v
    cdef unsigned long long u
    cdef Py_ssize_t n
    cdef const char* p
    cdef bytes raw = None, key
    cdef type t = type(value)
    if t is int or t is bool:
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow and v >= 0:
            return v
    elif t is str or isinstance(value, str):
        if PyUnicode_IS_ASCII(value):
            p = PyUnicode_AsUTF8AndSize(value, &n)
            return hash64(<const unsigned char*>p, n, PERSON_CONTENT)
        raw = str_utf8(value)
    elif t is bytes or isinstance(value, bytes):
        raw = value if t is bytes else bytes(value)
    if raw is not None:
        return hash64(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw),
                      PERSON_CONTENT)
    key = encode_key(value, fallback)
    if small_int_of_key(key, &u):
        return u
    return hash64(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                  PERSON_KEY)


# --------------------------------------------------------------------------
# decoding (debugging / inspection only)

class ExtensionKey:
    """What ``decode_key`` returns for a fallback-encoded value: its raw bytes."""

    __slots__ = ("payload",)

    def __init__(self, payload):
        self.payload = payload

    def __eq__(self, other):
        if isinstance(other, ExtensionKey):
            return self.payload == other.payload
        return NotImplemented

    def __hash__(self):
        return hash((ExtensionKey, self.payload))

    def __repr__(self):
        return f"ExtensionKey({self.payload!r})"


cdef int DECODE_INT_MAX_DIGITS = 4300
cdef object _UTC = timezone.utc
cdef object _EPOCH0 = datetime(1, 1, 1, tzinfo=timezone.utc)


cdef object _MAX_DATETIME_US = (datetime.max - datetime.min) // timedelta(microseconds=1)


def _fit_local(us, lo, hi):
    """Pick (local, offset) with local - offset == us and lo <= local <= hi.

    Used for UTC instants that have no representable UTC wall time. Prefers a
    whole-minute offset: CPython ignores an offset's microseconds when it
    compares aware times.
    """
    minute = 60_000_000
    if us < lo:
        off = -((us - lo) // minute) * minute
    else:
        off = ((hi - us) // minute) * minute
    if not -US_PER_DAY < off < US_PER_DAY:
        off = lo - us if us < lo else hi - us
        if not -US_PER_DAY < off < US_PER_DAY:
            raise ValueError("aware time/datetime out of range")
    return us + off, off


cdef class _Reader:
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef Py_ssize_t pos
    cdef bytes data

    cdef int need(self, Py_ssize_t k) except -1:
        if self.pos + k > self.n:
            raise ValueError("truncated key")
        return 0

    cdef int byte(self) except -1:
        self.need(1)
        self.pos += 1
        return self.p[self.pos - 1]

    cdef unsigned long long be(self, int k, unsigned char inv) except? 0:
        cdef unsigned long long v = 0
        cdef int i
        self.need(k)
        for i in range(k):
            v = (v << 8) | (self.p[self.pos + i] ^ inv)
        self.pos += k
        return v

    cdef bytes escaped(self):
        cdef Py_ssize_t start, i
        out = bytearray()
        while True:
            start = self.pos
            while self.pos < self.n and self.p[self.pos] != 0:
                self.pos += 1
            out += self.data[start:self.pos]
            self.need(2)
            if self.p[self.pos + 1] == 0x00:
                self.pos += 2
                return bytes(out)
            if self.p[self.pos + 1] != 0xFF:
                raise ValueError("bad escape in key")
            out.append(0)
            self.pos += 2

    cdef object number(self, bint neg):
        cdef unsigned char inv = 0xFF if neg else 0x00
        cdef int e0 = self.byte() ^ inv, k, c, x
        cdef unsigned long long v
        cdef long long e
        if 0x40 <= e0 < 0xC0:
            e = e0 - 0x80
        elif 0xC0 < e0 <= 0xC8:
            k = e0 - 0xC0
            v = self.be(k, inv)
            if (k > 1 and v >> (8 * (k - 1)) == 0) or v > 0x7FFFFFFFFFFFFFFF - 64:
                raise ValueError("non-canonical exponent")
            e = <long long>v + 64
        elif 0x38 <= e0 < 0x40:
            k = 0x40 - e0
            v = self.be(k, inv)
            if k < 8:
                v = (~v) & ((1ULL << (8 * k)) - 1)
            else:
                v = ~v
            if (k > 1 and v >> (8 * (k - 1)) == 0) or v > 0x7FFFFFFFFFFFFFFF - 65:
                raise ValueError("non-canonical exponent")
            e = -<long long>v - 65
        else:
            raise ValueError("bad number exponent")
        digits = []
        while True:
            c = self.byte() ^ inv
            if c > 199:
                raise ValueError("bad number mantissa")
            x = c >> 1
            digits.append(x // 10)
            digits.append(x % 10)
            if not c & 1:
                break
        nd = len(digits)  # no negative indexing: wraparound is off
        if digits[0] == 0 or (digits[nd - 1] == 0 and digits[nd - 2] == 0):
            raise ValueError("non-canonical number")
        if digits[nd - 1] == 0:
            digits.pop()
        exp10 = <object>(e - <long long>len(digits))  # Python int, so ** stays exact
        if exp10 >= 0 and e <= DECODE_INT_MAX_DIGITS:
            i = int("".join(map(str, digits))) * 10 ** exp10
            return -i if neg else i
        return Decimal((1 if neg else 0, tuple(digits), exp10))

    cdef object value(self, int depth):
        cdef int tag = self.byte()
        cdef long long us
        cdef const unsigned char* q
        if tag == TAG_NONE:
            return None
        if tag == TAG_ZERO:
            return 0
        if tag == TAG_POS or tag == TAG_NEG:
            return self.number(tag == TAG_NEG)
        if tag == TAG_PINF:
            return float("inf")
        if tag == TAG_NINF:
            return float("-inf")
        if tag == TAG_NAN:
            return float("nan")
        if tag == TAG_STR:
            return self.escaped().decode("utf-8", "surrogatepass")
        if tag == TAG_BYTES:
            return self.escaped()
        if tag == TAG_EXT:
            return ExtensionKey(self.escaped())
        if tag == TAG_DATE:
            self.need(4)
            q = self.p + self.pos
            self.pos += 4
            return date(q[0] << 8 | q[1], q[2], q[3])
        if tag == TAG_DATETIME:
            self.need(10)
            q = self.p + self.pos
            self.pos += 10
            return datetime(q[0] << 8 | q[1], q[2], q[3], q[4], q[5], q[6],
                            q[7] << 16 | q[8] << 8 | q[9])
        if tag == TAG_TIME:
            self.need(6)
            q = self.p + self.pos
            self.pos += 6
            return time(q[0], q[1], q[2], q[3] << 16 | q[4] << 8 | q[5])
        if tag == TAG_DATETIME_TZ:
            us = <long long>self.be(8, 0) - US_PER_DAY
            if 0 <= us <= _MAX_DATETIME_US:
                return _EPOCH0 + timedelta(microseconds=us)
            local, off = _fit_local(us, 0, _MAX_DATETIME_US)
            return (datetime.min + timedelta(microseconds=local)).replace(
                tzinfo=timezone(timedelta(microseconds=off)))
        if tag == TAG_TIME_TZ:
            us = <long long>self.be(6, 0) - US_PER_DAY
            if 0 <= us < US_PER_DAY:
                return (datetime.min + timedelta(microseconds=us)).time().replace(tzinfo=_UTC)
            local, off = _fit_local(us, 0, US_PER_DAY - 1)
            return (datetime.min + timedelta(microseconds=local)).time().replace(
                tzinfo=timezone(timedelta(microseconds=off)))
        if tag == TAG_TUPLE:
            if depth >= MAX_DEPTH:
                raise ValueError("key tuple nested too deeply")
            items = []
            while True:
                self.need(1)
                if self.p[self.pos] == TUPLE_END:
                    self.pos += 1
                    return tuple(items)
                items.append(self.value(depth + 1))
        raise ValueError(f"unknown key tag 0x{tag:02x}")


def decode_key(data) -> object:
    """Decode a key made by ``encode_key`` -- for debugging and inspection only.

    Keys are canonical, so the original type is not recoverable: integral
    numbers come back as int (up to 4300 digits), other finite numbers as
    Decimal, infinities and NaN as float, aware datetimes in UTC, aware times
    with UTC (or a compensating offset), fallback values as ExtensionKey.
    Raises ValueError for malformed input and ("key was hashed") for long keys.
    """
    cdef _Reader r = _Reader()
    r.data = bytes(data)
    r.p = <const unsigned char*>PyBytes_AS_STRING(r.data)
    r.n = PyBytes_GET_SIZE(r.data)
    r.pos = 0
    if r.n == HASHED_LEN:
        raise ValueError("key was hashed")
    if r.n > C_MAX_KEY:
        raise ValueError("key longer than MAX_KEY")
    result = r.value(0)
    if r.pos != r.n:
        raise ValueError("trailing bytes after key")
    return result
