"""dbzero: durable, shared, transactional Python objects on LMDB.

    import dbzero as db0

    @db0.memo
    class Person:
        def __init__(self, name):
            self.name = name

    db0.init("./data", prefix="main")
    alice = Person("Alice")      # persisted; no save calls

See docs/ for concepts, guarantees and every public function.
"""

from .errors import (  # noqa: F401
    AlreadyInitializedError, BadPrefixError, ClassNotFoundError, ConflictError, Error,
    FormatError, InvalidUUIDError, MigrateError, NoDefaultPrefixError, NotInitializedError,
    ObjectClosedError, ObjectNotFoundError, PrefixLockedError, PrefixNotFoundError,
    ReadOnlyError, ReferencedObjectError, ReferenceError, StateNotAvailableError, StorageError,
    TransactionError, UnsupportedAttributeError, UnsupportedTypeError,
)
from .memo import memo, is_memo  # noqa: F401
from .prefix import MemoBase, WeakRef  # noqa: F401
from .enums import enum, is_enum, is_enum_value, EnumType, EnumValue  # noqa: F401
from .api import (  # noqa: F401
    PrefixMetaData, build_flags, clear_cache, close, commit, delete, exists, expired, fetch,
    get_cache_stats, get_config, get_current_prefix, get_mutable_prefixes, get_prefix_of,
    get_prefixes, get_state_num, getrefcount, init, is_singleton, materialized, open, refresh,
    set_cache_size, set_prefix, uuid, wait, weak_proxy,
)

from .snapshot import snapshot, get_snapshot_of, compact, Snapshot  # noqa: F401
from .atomic import atomic, atomic_assign, AtomicManager  # noqa: F401
from .sharing import async_wait, pause_refresh, transaction, transactional  # noqa: F401

from .tags import tags, find, no, as_tag, split_by, filter, Tag  # noqa: F401,A004
from .index import index, Index  # noqa: F401

from .tools import assign, compare, copy_prefix, drop, find_singleton, get_type  # noqa: F401

__version__ = "0.1.0"

from .collections import (  # noqa: F401,A004 - db0.list/dict/... shadow the builtins on purpose
    List, Dict, Set, Tuple, ByteArray, list, dict, set, tuple, bytearray, hash,
)
from .loading import load, load_all  # noqa: F401
from .changes import select_new, select_deleted, select_modified, SnapshotWindow, touch  # noqa: F401,E402
