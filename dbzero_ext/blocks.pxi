# Included by query.pyx (one extension; OidSet is shared with the scans below).
#
# Range-index blocks (format version 2, see docs/format.md and dbzero/index.py)
# ===========================================================================
#
# An index stores two sorted sequences of byte-string *entries*:
#
# * forward entries ``section + ekey + tail`` (``section`` is b"e" for a non-null key and
#   b"n" for the null key, whose ``ekey`` is empty; ``tail`` is ``oid (8 BE) + 00`` for an
#   object of the index's prefix, ``oid (8) + prefix uuid (7) + 01`` otherwise), in
#   key order;
# * reverse entries ``member + ekey`` (``member`` is ``oid + 00`` or ``oid + 01 + uuid``),
#   one per forward entry, in member order.
#
# Each sequence is cut into *blocks* of up to ~BLOCK_BYTES bytes.  A block is one value of
# the versioned ``index`` table, keyed by ``index id + section letter + its last entry``, so
# ``set_range(prefix + x)`` lands on the only block that can hold ``x``.  A block value is
# the concatenation of its entries, each preceded by its length (one byte below 0x80, else
# two bytes ``0x80 | hi, lo``).
#
# Everything here works on whole blocks: a committed range is a few LMDB reads and a C
# loop, and a commit rewrites only the blocks its changes fall into.  Block *sources*
# (CursorSource over an LMDB cursor, ListSource over a list for snapshot views) hide where
# blocks come from: ``seek(entry)`` returns the payload of the first block whose last entry
# is ``>= entry`` (None past the end), ``next()`` the following block, ``seek_last()`` the
# last block; ``last`` is the last entry of the block returned most recently.

from bisect import bisect_left as _bisect_left

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, qsort
from libc.string cimport memcpy

BLOCK_BYTES = 4000     # payload bytes per block: one LMDB overflow page with the header
PROBE_BLOCKS = 1024    # decoded blocks a Probe keeps (~8 MiB with their entry tables)


cdef struct Span:
    const unsigned char* p
    Py_ssize_t n


cdef inline int _cmpbuf(const unsigned char* a, Py_ssize_t la,
                        const unsigned char* b, Py_ssize_t lb) noexcept nogil:
    cdef int c = memcmp(a, b, la if la < lb else lb)
    if c != 0:
        return c
    return (la > lb) - (la < lb)


cdef inline int _cmp_sb(Span s, bytes b) noexcept:
    return _cmpbuf(s.p, s.n, <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef inline bint _starts(Span s, bytes p) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(p)
    return s.n >= n and memcmp(s.p, PyBytes_AS_STRING(p), n) == 0


cdef inline bytes _span_bytes(Span s, Py_ssize_t start, Py_ssize_t end):
    return PyBytes_FromStringAndSize(<const char*>s.p + start, end - start)


cdef class Block:
    """A decoded block: its payload and the (pointer, length) of each entry."""

    cdef bytes payload
    cdef Span* spans
    cdef Py_ssize_t n

    def __cinit__(self):
        self.spans = NULL
        self.n = 0

    def __dealloc__(self):
        free(self.spans)

    def __len__(self):
        return self.n

    def entries(self):
        return [_span_bytes(self.spans[i], 0, self.spans[i].n) for i in range(self.n)]


cdef Block _decode(bytes payload):
    cdef Block b = Block.__new__(Block)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload), pos = 0, k = 0, ln
    b.payload = payload
    b.spans = <Span*>malloc(sizeof(Span) * (size // 2 + 1))
    if b.spans == NULL:
        raise MemoryError()
    while pos < size:
        ln = p[pos]
        if ln & 0x80:
            if pos + 1 >= size:
                raise ValueError("corrupt index block")
            ln = ((ln & 0x7f) << 8) | p[pos + 1]
            pos += 2
        else:
            pos += 1
        if ln == 0 or pos + ln > size:
            raise ValueError("corrupt index block")
        b.spans[k].p = p + pos
        b.spans[k].n = ln
        k += 1
        pos += ln
    b.n = k
    return b


cdef Py_ssize_t _lower(Block b, bytes key) noexcept:
    """Index of the first entry >= key (b.n if none)."""
    cdef Py_ssize_t lo = 0, hi = b.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _cmp_sb(b.spans[mid], key) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


def decode_block(bytes payload):
    """The entries of a block payload (a list of bytes)."""
    return _decode(payload).entries()


cdef inline Py_ssize_t _entry_size(Py_ssize_t n) noexcept:
    return n + (1 if n < 0x80 else 2)


cdef bytes _build(list entries, Py_ssize_t start, Py_ssize_t end, Py_ssize_t size):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i, n
    cdef bytes e
    for i in range(start, end):
        e = <bytes>entries[i]
        n = PyBytes_GET_SIZE(e)
        if n < 0x80:
            w[0] = <unsigned char>n
            w += 1
        else:
            w[0] = <unsigned char>(0x80 | (n >> 8))
            w[1] = <unsigned char>(n & 0xff)
            w += 2
        memcpy(w, PyBytes_AS_STRING(e), n)
        w += n
    return out


def encode_blocks(list entries, Py_ssize_t target, bint greedy):
    """Cut sorted ``entries`` into blocks: a list of ``(last entry, payload)``.

    ``greedy`` fills every block up to ``target`` bytes (appending at the end of an index
    leaves full blocks behind); otherwise the entries are spread evenly over the fewest
    blocks of at most ~``target`` bytes (a split leaves room on both sides).
    """
    cdef Py_ssize_t n = len(entries), i, total = 0, k, acc = 0, start = 0, sz, done = 0
    cdef list out = []
    cdef double goal
    for i in range(n):
        total += _entry_size(PyBytes_GET_SIZE(<bytes>entries[i]))
    if n == 0:
        return out
    if greedy or total <= target:
        for i in range(n):
            sz = _entry_size(PyBytes_GET_SIZE(<bytes>entries[i]))
            if acc > 0 and acc + sz > target:
                out.append((entries[i - 1], _build(entries, start, i, acc)))
                start = i
                acc = 0
            acc += sz
    else:
        k = (total + target - 1) // target
        goal = <double>total / k
        for i in range(n):
            sz = _entry_size(PyBytes_GET_SIZE(<bytes>entries[i]))
            # cut where the running total crosses the next multiple of total / k
            if acc > 0 and done + acc + sz / 2.0 > goal * (len(out) + 1):
                out.append((entries[i - 1], _build(entries, start, i, acc)))
                done += acc
                start = i
                acc = 0
            acc += sz
    out.append((entries[n - 1], _build(entries, start, n, acc)))
    return out


# -- sorted lists of entries ----------------------------------------------------------------------

cdef struct _Item:
    uint64_t pre            # the first 8 bytes, big-endian, zero-padded
    const unsigned char* p
    Py_ssize_t n
    Py_ssize_t i


cdef int _item_cmp(const void* a, const void* b) noexcept nogil:
    # Comparing the inline prefixes first keeps most comparisons inside the array: the
    # byte strings themselves are scattered over the heap.
    cdef const _Item* x = <const _Item*>a
    cdef const _Item* y = <const _Item*>b
    if x.pre != y.pre:
        return -1 if x.pre < y.pre else 1
    cdef int c = _cmpbuf(x.p, x.n, y.p, y.n)
    if c != 0:
        return c
    return (x.i > y.i) - (x.i < y.i)


cdef int _radix_sort(_Item* a, Py_ssize_t n) except -1:
    """Sort by ``pre`` (LSD radix, stable; bytes that are equal in every item are
    skipped), then order runs of equal prefixes by full comparison."""
    cdef _Item* tmp = <_Item*>malloc(sizeof(_Item) * n)
    cdef _Item* src = a
    cdef _Item* dst = tmp
    cdef _Item* sw
    cdef Py_ssize_t count[256]
    cdef Py_ssize_t i, j, pos, c
    cdef int shift, d
    if tmp == NULL:
        raise MemoryError()
    for shift in range(0, 64, 8):
        memset(count, 0, sizeof(count))
        for i in range(n):
            count[(src[i].pre >> shift) & 0xff] += 1
        if count[(src[0].pre >> shift) & 0xff] == n:
            continue
        pos = 0
        for d in range(256):
            c = count[d]
            count[d] = pos
            pos += c
        for i in range(n):
            d = (src[i].pre >> shift) & 0xff
            dst[count[d]] = src[i]
            count[d] += 1
        sw = src
        src = dst
        dst = sw
    if src != a:
        memcpy(a, src, sizeof(_Item) * n)
    free(tmp)
    i = 0
    while i < n:
        j = i + 1
        while j < n and a[j].pre == a[i].pre:
            j += 1
        if j - i > 1:
            qsort(a + i, j - i, sizeof(_Item), _item_cmp)
        i = j
    return 0


def sort_entries(entries):
    """The byte strings of ``entries`` (any iterable) sorted and de-duplicated (a list)."""
    cdef list src = list(entries)
    cdef Py_ssize_t n = len(src), i, k
    cdef _Item* items
    cdef list out = []
    cdef bytes e
    if n == 0:
        return out
    items = <_Item*>malloc(sizeof(_Item) * n)
    if items == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            e = <bytes?>src[i]
            items[i].p = <const unsigned char*>PyBytes_AS_STRING(e)
            items[i].n = PyBytes_GET_SIZE(e)
            items[i].i = i
            items[i].pre = 0
            for k in range(8):
                items[i].pre = (items[i].pre << 8) | (items[i].p[k] if k < items[i].n else 0)
        _radix_sort(items, n)
        for i in range(n):
            if i and items[i].pre == items[i - 1].pre and \
                    _cmpbuf(items[i].p, items[i].n, items[i - 1].p, items[i - 1].n) == 0:
                continue
            out.append(src[items[i].i])
    finally:
        free(items)
    return out


def merge_entries(list a, list b):
    """Union of two sorted lists of entries (sorted, without duplicates)."""
    cdef Py_ssize_t i = 0, j = 0, na = len(a), nb = len(b)
    cdef list out = []
    cdef bytes x, y
    cdef int c
    while i < na and j < nb:
        x = <bytes>a[i]
        y = <bytes>b[j]
        c = _cmpbuf(<const unsigned char*>PyBytes_AS_STRING(x), PyBytes_GET_SIZE(x),
                    <const unsigned char*>PyBytes_AS_STRING(y), PyBytes_GET_SIZE(y))
        if c < 0:
            out.append(x)
            i += 1
        elif c > 0:
            out.append(y)
            j += 1
        else:
            out.append(x)
            i += 1
            j += 1
    if i < na:
        out.extend(a[i:])
    if j < nb:
        out.extend(b[j:])
    return out


def subtract_entries(list a, list b):
    """The entries of sorted ``a`` that are not in sorted ``b``."""
    cdef Py_ssize_t i = 0, j = 0, na = len(a), nb = len(b)
    cdef list out = []
    cdef bytes x, y
    cdef int c
    while i < na:
        x = <bytes>a[i]
        while j < nb:
            y = <bytes>b[j]
            c = _cmpbuf(<const unsigned char*>PyBytes_AS_STRING(x), PyBytes_GET_SIZE(x),
                        <const unsigned char*>PyBytes_AS_STRING(y), PyBytes_GET_SIZE(y))
            if c <= 0:
                break
            j += 1
        if j < nb and x == b[j]:
            i += 1
            continue
        out.append(x)
        i += 1
    return out


# -- entries ------------------------------------------------------------------------------------

cpdef bytes pair_entry(ekey, uint64_t oid, uuid):
    """The forward entry of (key, object): ``ekey`` None for the null key, ``uuid`` None
    for an object of the index's own prefix (else its prefix uuid, 7 bytes)."""
    cdef Py_ssize_t ke = 0 if ekey is None else PyBytes_GET_SIZE(<bytes>ekey)
    cdef Py_ssize_t tail = 9 if uuid is None else 16
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 1 + ke + tail)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(out)
    cdef int i
    w[0] = 0x6e if ekey is None else 0x65           # b"n" / b"e"
    if ke:
        memcpy(w + 1, PyBytes_AS_STRING(<bytes>ekey), ke)
    w += 1 + ke
    for i in range(8):
        w[i] = <unsigned char>(oid >> (56 - 8 * i))
    if uuid is None:
        w[8] = 0
    else:
        if PyBytes_GET_SIZE(<bytes?>uuid) != 7:
            raise ValueError("prefix uuid must be 7 bytes")
        memcpy(w + 8, PyBytes_AS_STRING(<bytes>uuid), 7)
        w[15] = 1
    return out


cdef inline Py_ssize_t _tail_len(const unsigned char* p, Py_ssize_t n) noexcept:
    return 9 if p[n - 1] == 0 else 16


cdef bytes _reverse_of(const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t tail = _tail_len(p, n), ke = n - 1 - tail
    cdef bytes out = PyBytes_FromStringAndSize(NULL, (9 if tail == 9 else 16) + ke)
    cdef unsigned char* w = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(w, p + n - tail, 8)
    if tail == 9:
        w[8] = 0
        w += 9
    else:
        w[8] = 1
        memcpy(w + 9, p + n - 8, 7)
        w += 16
    if ke:
        memcpy(w, p + 1, ke)
    return out


def reverse_entries(list forward):
    """The reverse entry ``member + ekey`` of each forward entry (same order)."""
    cdef list out = []
    cdef bytes e
    for e in forward:
        out.append(_reverse_of(<const unsigned char*>PyBytes_AS_STRING(e), PyBytes_GET_SIZE(e)))
    return out


def entry_member(bytes entry):
    """The member named by a forward entry: an int oid or ``(prefix uuid, oid)``."""
    cdef Py_ssize_t tail
    return _member(entry, &tail)


def member_prefix(member):
    """The reverse-entry prefix of a member (int oid or ``(prefix uuid, oid)``)."""
    if type(member) is int:
        return (<object>member).to_bytes(8, "big") + b"\x00"
    return (<object>member[1]).to_bytes(8, "big") + b"\x01" + member[0]


def shared_member(list reverse):
    """True if two neighbours of the sorted reverse entries belong to one member."""
    cdef Py_ssize_t i, n = len(reverse), la, lb
    cdef bytes a, b
    for i in range(1, n):
        a = <bytes>reverse[i - 1]
        b = <bytes>reverse[i]
        la = 9 if (<const unsigned char*>PyBytes_AS_STRING(a))[8] == 0 else 16
        lb = 9 if (<const unsigned char*>PyBytes_AS_STRING(b))[8] == 0 else 16
        if la == lb and memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), la) == 0:
            return True
    return False


# -- block sources --------------------------------------------------------------------------------

cdef class CursorSource:
    """Blocks of one section (``prefix`` = index id + section letter) read with a cursor of
    the live read transaction (values carry the 8-byte write-state header)."""

    cdef object cursor
    cdef bytes prefix
    cdef Py_ssize_t plen
    cdef public bytes last

    def __init__(self, cursor, bytes prefix):
        self.cursor = cursor
        self.prefix = prefix
        self.plen = PyBytes_GET_SIZE(prefix)
        self.last = None

    cdef object _here(self):
        cdef bytes key = self.cursor.key()
        if PyBytes_GET_SIZE(key) <= self.plen or \
                memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(self.prefix), self.plen) != 0:
            self.last = None
            return None
        self.last = key[self.plen:]
        return self.cursor.value()[8:]

    def seek(self, bytes entry):
        if not self.cursor.set_range(self.prefix + entry):
            self.last = None
            return None
        return self._here()

    def locate(self, bytes entry):
        """Like :meth:`seek` without reading the block: its last entry, or None."""
        cdef bytes key
        if not self.cursor.set_range(self.prefix + entry):
            self.last = None
            return None
        key = self.cursor.key()
        if PyBytes_GET_SIZE(key) <= self.plen or \
                memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(self.prefix), self.plen) != 0:
            self.last = None
            return None
        self.last = key[self.plen:]
        return self.last

    def payload(self):
        """The block found by the last :meth:`locate`."""
        return self.cursor.value()[8:]

    def next(self):
        if self.last is None or not self.cursor.next():
            self.last = None
            return None
        return self._here()

    def seek_last(self):
        # the sections are single letters: the next letter bounds this section
        cdef bytes stop = self.prefix[:self.plen - 1] + bytes((self.prefix[self.plen - 1] + 1,))
        if self.cursor.set_range(stop):
            if not self.cursor.prev():
                self.last = None
                return None
        elif not self.cursor.last():
            self.last = None
            return None
        return self._here()


cdef class ListSource:
    """Blocks of one section given as sorted ``keys`` (last entries) and ``values``."""

    cdef list keys
    cdef list values
    cdef Py_ssize_t pos
    cdef public bytes last

    def __init__(self, list keys, list values):
        self.keys = keys
        self.values = values
        self.pos = len(keys)
        self.last = None

    cdef object _at(self, Py_ssize_t pos):
        self.pos = pos
        if pos >= len(self.keys):
            self.last = None
            return None
        self.last = self.keys[pos]
        return self.values[pos]

    def seek(self, bytes entry):
        return self._at(_bisect_left(self.keys, entry))

    def locate(self, bytes entry):
        self._at(_bisect_left(self.keys, entry))
        return self.last

    def payload(self):
        return self.values[self.pos]

    def next(self):
        if self.last is None:
            return None
        return self._at(self.pos + 1)

    def seek_last(self):
        return self._at(len(self.keys) - 1) if self.keys else self._at(0)


cdef class Probe:
    """Point questions against one section, reusing the last block read: checks while
    adding many pairs with nearby keys (or past the end) cost no LMDB read."""

    cdef object source
    cdef Block block        # the cached block (None: nothing cached)
    cdef bytes lo           # every entry in [lo, hi] lives in the cached block
    cdef bytes hi           # the cached block's last entry
    cdef bint known_end     # ``end`` is known
    cdef bytes end          # the section's last entry (None: the section is empty)
    cdef dict decoded       # last entry -> Block, for blocks read before

    def __init__(self, source):
        self.source = source
        self.block = None
        self.known_end = False
        self.decoded = {}

    cdef bint _past_end(self, bytes entry):
        """True if ``entry`` is known to sort after every stored entry."""
        return self.known_end and (self.end is None or entry > self.end)

    cdef Block _load(self, bytes entry):
        if self.block is not None and self.lo <= entry and entry <= self.hi:
            return self.block
        if self._past_end(entry):
            return None
        last = self.source.locate(entry)
        if last is None:
            self.block = None
            self.source.seek_last()
            self.end = self.source.last
            self.known_end = True
            return None
        block = self.decoded.get(last)
        if block is None:
            if len(self.decoded) >= PROBE_BLOCKS:
                self.decoded.clear()
            block = self.decoded[last] = _decode(self.source.payload())
        self.block = block
        self.hi = last
        first = _span_bytes(self.block.spans[0], 0, self.block.spans[0].n) if self.block.n else entry
        self.lo = first if first < entry else entry
        return self.block

    def has(self, bytes entry):
        """True if ``entry`` is stored."""
        cdef Block b = self._load(entry)
        cdef Py_ssize_t i
        if b is None:
            return False
        i = _lower(b, entry)
        return i < b.n and _cmp_sb(b.spans[i], entry) == 0

    def with_prefix(self, bytes p):
        """The entries starting with ``p``, each without ``p`` (in order)."""
        cdef Block b = self._load(p)
        cdef list out = []
        cdef Py_ssize_t i, lp = PyBytes_GET_SIZE(p)
        if b is None:
            return out
        i = _lower(b, p)
        while True:
            while i < b.n and _starts(b.spans[i], p):
                out.append(_span_bytes(b.spans[i], lp, b.spans[i].n))
                i += 1
            if i < b.n or not self.hi.startswith(p):
                return out
            payload = self.source.next()        # the run continues in the next block
            if payload is None:
                self.block = None
                return out
            b = _decode(payload)
            self.block = b
            self.lo = self.hi + b"\x00"
            self.hi = self.source.last
            i = 0


# -- scans ------------------------------------------------------------------------------------------

cdef class _Emit:
    cdef list members
    cdef list keys
    cdef OidSet only
    cdef OidSet seen
    cdef bint want_keys

    cdef int emit(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t tail = _tail_len(p, n)
        cdef uint64_t oid = _be64(p + n - tail)
        cdef object m
        if tail == 9:
            if self.only is not None and not self.only._has(oid):
                return 0
            if self.seen is not None:
                if self.seen._has(oid):
                    return 0
                self.seen._add(oid)
            m = oid
        else:
            m = (PyBytes_FromStringAndSize(<const char*>p + n - 8, 7), oid)
            if self.only is not None and m not in self.only.other:
                return 0
            if self.seen is not None:
                if m in self.seen.other:
                    return 0
                self.seen.other.add(m)
        self.members.append(m)
        if self.want_keys:
            self.keys.append(PyBytes_FromStringAndSize(<const char*>p + 1, n - 1 - tail))
        return 0

    cdef inline int emit_bytes(self, bytes e) except -1:
        return self.emit(<const unsigned char*>PyBytes_AS_STRING(e), PyBytes_GET_SIZE(e))


def scan(source, bytes lo, bytes hi, bint reverse, list pending, list removed,
         OidSet only, OidSet seen, bint want_keys):
    """Members of the forward entries in ``[lo, hi)``, in walk order.

    ``source`` (None: nothing committed) yields the committed blocks; ``pending`` holds the
    uncommitted entries of the range, sorted ascending; ``removed`` the committed entries
    pending removal, sorted ascending (None/empty: none).  ``only`` (None: everything)
    keeps the members it contains; ``seen`` (None: no de-duplication) drops members already
    in it and records the emitted ones, so one OidSet de-duplicates across calls.  With
    ``want_keys`` the encoded key of each emitted entry is returned too.

    A member is an int oid (object of the index's prefix) or ``(prefix uuid, oid)``.
    Returns ``(members, keys_or_None)``.
    """
    cdef _Emit out = _Emit()
    cdef Py_ssize_t pi, np = len(pending) if pending is not None else 0
    cdef Py_ssize_t ri, nr = len(removed) if removed is not None else 0
    cdef Py_ssize_t i, bi
    cdef Block b
    cdef Span s
    cdef bint stop = False
    cdef int c
    cdef list blocks
    out.members = []
    out.keys = [] if want_keys else None
    out.only = only
    out.seen = seen
    out.want_keys = want_keys
    if not reverse:
        pi = 0
        ri = 0
        payload = source.seek(lo) if source is not None else None
        while payload is not None:
            b = _decode(payload)
            i = _lower(b, lo)
            while i < b.n:
                s = b.spans[i]
                i += 1
                if _cmp_sb(s, hi) >= 0:
                    stop = True
                    break
                while pi < np:
                    c = _cmp_sb(s, <bytes>pending[pi])
                    if c < 0:
                        break
                    if c > 0:
                        out.emit_bytes(<bytes>pending[pi])
                    pi += 1
                while ri < nr and _cmp_sb(s, <bytes>removed[ri]) > 0:
                    ri += 1
                if ri < nr and _cmp_sb(s, <bytes>removed[ri]) == 0:
                    ri += 1
                    continue
                out.emit(s.p, s.n)
            if stop:
                break
            payload = source.next()
        while pi < np:
            out.emit_bytes(<bytes>pending[pi])
            pi += 1
        return out.members, out.keys
    blocks = []
    payload = source.seek(lo) if source is not None else None
    while payload is not None:
        blocks.append(payload)
        if source.last >= hi:
            break
        payload = source.next()
    pi = np - 1
    ri = nr - 1
    for bi in range(len(blocks) - 1, -1, -1):
        b = _decode(<bytes>blocks[bi])
        i = _lower(b, hi) - 1
        while i >= 0:
            s = b.spans[i]
            i -= 1
            if _cmp_sb(s, lo) < 0:
                stop = True
                break
            while pi >= 0:
                c = _cmp_sb(s, <bytes>pending[pi])
                if c > 0:
                    break
                if c < 0:
                    out.emit_bytes(<bytes>pending[pi])
                pi -= 1
            while ri >= 0 and _cmp_sb(s, <bytes>removed[ri]) < 0:
                ri -= 1
            if ri >= 0 and _cmp_sb(s, <bytes>removed[ri]) == 0:
                ri -= 1
                continue
            out.emit(s.p, s.n)
        if stop:
            break
    while pi >= 0:
        out.emit_bytes(<bytes>pending[pi])
        pi -= 1
    return out.members, out.keys


def lookup(source, list prefixes):
    """For each of the sorted ``prefixes``, the committed entries starting with it, each
    without the prefix (a list of lists, in the order of ``prefixes``)."""
    cdef Probe probe = Probe(source)
    return [probe.with_prefix(p) for p in prefixes]


def contains(source, list entries):
    """For each of the sorted ``entries``, whether it is committed (a list of bools)."""
    cdef Probe probe = Probe(source)
    return [probe.has(e) for e in entries]


# -- materialising --------------------------------------------------------------------------------

cdef inline bint _dead(object obj) except -1:
    """A memo object flagged dead or an expired collection (memo flags are read as the C
    field: MemoBase.__getattribute__ would cost more than the rest of the walk)."""
    if isinstance(obj, MemoBase):
        return (<MemoBase>obj)._flags & F_DEAD != 0
    return bool(getattr(obj, "_db0_dead", False))


def live_objects(list objs):
    """``objs`` without None, memo objects flagged dead and expired collections."""
    cdef list out = []
    for obj in objs:
        if obj is not None and not _dead(obj):
            out.append(obj)
    return out


def compact(list objs):
    """``objs`` without the Nones."""
    cdef list out = []
    for obj in objs:
        if obj is not None:
            out.append(obj)
    return out


def all_ints(list members):
    """True if every member is an int (objects of the query's own prefix)."""
    for m in members:
        if type(m) is not int:
            return False
    return True
