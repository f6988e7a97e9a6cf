"""Lifecycle and identity functions of the public API (``db0.init``, ``db0.fetch`` ...)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, NamedTuple, Optional, Type, TypeVar

from dbzero_ext import core as _core

from . import errors, workspace
from .memo import is_memo, singleton_of
from .prefix import F_DEAD, F_GHOST, F_INIT, MemoBase, WeakRef
from .snapshot import _active_view

T = TypeVar("T")


class PrefixMetaData(NamedTuple):
    """Name and unique id of a prefix."""
    name: str
    uuid: str


def _meta(px) -> PrefixMetaData:
    return PrefixMetaData(px.name, px.uuid.hex())


# -- lifecycle -------------------------------------------------------------------------------

def init(dbzero_root: str, **kwargs: Any) -> None:
    """Initialise dbzero with a storage root directory.

    Keywords: ``prefix`` (open it and make it current), ``read_write`` (mode of that
    prefix), ``autocommit`` (default True), ``autocommit_interval`` (ms, default 367),
    ``cache_size`` (bytes), ``lock_flags={"blocking": bool, "timeout": seconds}``,
    ``durability`` ("full": every commit is fsync'ed; "fast": a crash may lose the last
    commits but never corrupts).  Other keywords of the reference are accepted and ignored.

    Raises AlreadyInitializedError if called twice without ``close()``.
    """
    workspace.init(dbzero_root, **kwargs)


def open(prefix_name: str, open_mode: str = "rw", **kwargs: Any) -> None:  # noqa: A001
    """Open (creating in "rw" mode) a prefix and make it current.

    ``open_mode`` is "rw" or "r".  Keywords: ``autocommit`` (per prefix),
    ``lock_flags``; ``slab_size``, ``meta_io_step_size``, ``page_io_step_size`` are accepted
    for compatibility with the reference and have no effect here.
    Raises BadPrefixError (bad name/mode), PrefixNotFoundError ("r" on a missing prefix),
    PrefixLockedError (another process writes it), TypeError (unknown keyword).
    """
    for key in kwargs:
        if key not in workspace.OPEN_KWARGS:
            raise TypeError(f"open() got an unexpected keyword argument '{key}'")
    ws = workspace.current()
    ws.open(prefix_name, open_mode, autocommit=kwargs.get("autocommit"),
            lock_flags=kwargs.get("lock_flags"), shared=kwargs.get("shared"),
            refresh_interval=kwargs.get("refresh_interval"))


def close(prefix_name: Optional[str] = None) -> None:
    """Commit and close one prefix, or (no argument) everything; the latter de-initialises."""
    workspace.close(prefix_name)


def commit(prefix_name: Optional[str] = None) -> None:
    """Commit pending changes of one prefix or of all read-write prefixes.

    Raises TransactionError inside ``db0.atomic()``, PrefixNotFoundError for an unknown name.
    """
    workspace.current().commit(prefix_name)


def get_state_num(prefix: Optional[str] = None, finalized: bool = False) -> int:
    """Last committed state (``finalized=True``) or the number the next commit will get."""
    ws = workspace.current()
    with ws.lock:
        px = ws.get_prefix(prefix)
        state = px.state_num
        if px.readonly or finalized:
            return state
        return state + 1


def get_config() -> Dict[str, Any]:
    """The workspace configuration given to ``init``."""
    return dict(workspace.current().config)


def build_flags() -> str:
    """Compile-time flags of the engine (always empty here; kept for compatibility)."""
    return ""


def get_current_prefix() -> PrefixMetaData:
    return _meta(workspace.current().current_prefix())


def get_prefixes() -> List[PrefixMetaData]:
    """Every prefix found under the storage root, open or not."""
    ws = workspace.current()
    out = []
    for name in ws.prefix_names_on_disk():
        px = ws.prefixes.get(name)
        out.append(PrefixMetaData(name, px.uuid.hex() if px else ""))
    return out


def get_mutable_prefixes() -> List[PrefixMetaData]:
    ws = workspace.current()
    return [_meta(px) for px in ws.prefixes.values() if not px.readonly]


def get_prefix_of(obj: Any) -> PrefixMetaData:
    """The prefix an object, collection, query or memo class lives in."""
    ws = workspace.current()
    if isinstance(obj, type):
        if not is_memo(obj):
            raise TypeError(f"{obj.__name__} is not a memo class")
        return _meta(ws.prefix_for_class(obj))
    px = getattr(obj, "_px", None)
    if px is None:
        raise TypeError(f"Unable to get prefix of {type(obj).__name__}")
    return _meta(px)


# -- identity ----------------------------------------------------------------------------------

def _memo_instance(obj: Any, what: str) -> MemoBase:
    if not isinstance(obj, MemoBase):
        raise errors.Error(f"Unable to {what} for: {type(obj).__name__} type")
    return obj


def uuid(obj: Any) -> str:
    """The object's 24-character id, stable across processes.  Memo instances only."""
    if isinstance(obj, WeakRef):
        return workspace.Workspace.format_uuid(obj.prefix_uuid, obj.oid)
    obj = _memo_instance(obj, "generate UUID")
    if obj._flags & F_DEAD:
        raise errors.ReferenceError("Memo instance expired")
    return obj._px.uuid_of(obj._oid)


_view = _active_view.get


def _fetch_other(ws, identifier: Any, prefix: Optional[str]) -> Any:
    with ws.lock:
        return _fetch_live(ws, identifier, prefix)


_core.configure_fetch(_view, _fetch_other)
# db0.fetch(identifier, expected_type=None, prefix=None): the uuid path runs in C
# (dbzero_ext/core.pyx); singleton classes and errors come back here.
fetch = _core.fetch


def _fetch_live(ws, identifier: Any, prefix: Optional[str]) -> Any:
    if isinstance(identifier, str):
        prefix_uuid, oid = ws.parse_uuid(identifier)
        px = ws.prefix_by_uuid(prefix_uuid)
        return px.fetch(oid)
    if isinstance(identifier, type):
        return _fetch_singleton(ws, identifier, prefix)
    raise errors.Error("Invalid argument type")


def _fetch_singleton(ws, cls: type, prefix: Optional[str]) -> Any:
    if not is_memo(cls):
        raise errors.Error("Invalid argument type")
    px = ws.prefix_for_read(prefix) if prefix is not None else \
        (ws.prefix_for_class(cls) if cls.__db0_prefix__ else ws.current_prefix())
    return _fetch_singleton_in(px, cls)


def _fetch_singleton_in(px, cls: type) -> Any:
    if not is_memo(cls):
        raise errors.Error("Invalid argument type")
    if px.class_info(cls, create=False) is None:
        raise errors.ClassNotFoundError(f"Class not found: {cls.__db0_type_id__}")
    if not cls.__db0_singleton__:
        raise errors.Error("Not a dbzero singleton type")
    obj = singleton_of(px, cls)
    if obj is None:
        raise errors.ClassNotFoundError(f"Class not found: {cls.__db0_type_id__}")
    return obj


def exists(identifier: Any, expected_type: Optional[type] = None, prefix: Optional[str] = None) -> bool:
    """True if ``fetch`` would find the object (and it has the expected type)."""
    view = _view()
    if view is not None:
        return view.exists(identifier, expected_type, prefix)
    ws = workspace.current()
    if not isinstance(identifier, (str, type)):
        raise errors.Error("Invalid argument type")
    with ws.lock:
        try:
            obj = _fetch_live(ws, identifier, prefix)
        except errors.PrefixNotFoundError:
            raise
        except (errors.Error, TypeError):
            return False
    return expected_type is None or isinstance(obj, expected_type)


def is_singleton(obj: Any) -> bool:
    if not isinstance(obj, MemoBase):
        raise TypeError("Invalid argument type")
    return bool(type(obj).__db0_singleton__)


def getrefcount(obj: Any) -> int:
    """Number of persistent strong references to a memo object or collection."""
    if isinstance(obj, type) and is_memo(obj):
        from .tags import class_instance_count
        return class_instance_count(obj)
    if isinstance(obj, MemoBase):
        if obj._flags & F_GHOST:
            obj._px.load_into(obj)
        # Tags are references kept out of the stored count (docs/concepts.md).
        with obj._px.lock:
            return obj._rc + obj._px.tags.reference_count(obj._oid)
    if getattr(obj, "_db0_kind", None) is not None:
        return obj._db0_refcount()
    raise errors.Error(f"Unable to retrieve ref count for type: {type(obj).__name__}")


def delete(obj: Any) -> None:
    """Delete a memo object now; its proxy expires.  Non-memo arguments are ignored.

    Raises ReferencedObjectError if anything persistent still references it.
    """
    if not isinstance(obj, MemoBase):
        return
    px = obj._px
    with px.lock:
        px.check_writable()
        px.delete_object(obj)


def materialized(obj: T) -> T:
    """The object itself (the reference needed this inside ``__init__``; here any time)."""
    return obj


def set_prefix(obj: Any, prefix: Optional[str] = None) -> None:
    """Move a memo object under construction to another prefix (first line of __init__)."""
    if not isinstance(obj, MemoBase):
        raise TypeError("set_prefix expects a memo object")
    ws = workspace.current()
    with ws.lock:
        from .prefix import raw_dict
        if not (obj._flags & F_INIT) or raw_dict(obj):
            raise errors.Error("set_prefix failed: must be called before initializing any object members")
        target = ws.current_prefix() if prefix is None else ws.get_prefix(prefix) \
            if workspace.normalize_prefix_name(prefix) in ws.prefixes \
            else ws.open(prefix, "rw", make_current=False)
        if target is obj._px:
            return
        obj._px.rehome(obj, target)


# -- caches and refresh ---------------------------------------------------------------------------

def set_cache_size(size: int) -> None:
    """Set the byte budget of the decoded-data cache.  Raises TypeError/ValueError."""
    workspace._check_cache_size(size)
    ws = workspace.current()
    ws.cache_capacity = size
    from .cache import chunk_cache
    chunk_cache.set_capacity(size)


def clear_cache() -> None:
    """Drop cached decoded data; live proxies stay valid and pending changes are kept."""
    ws = workspace.current()
    from .cache import chunk_cache
    with ws.lock:
        chunk_cache.clear()


def get_cache_stats() -> Dict[str, int]:
    from .cache import chunk_cache
    workspace.current()
    return chunk_cache.stats()


# Readers and shared writers: dbzero/sharing.py (cheap when nothing was committed).
from .sharing import refresh, wait  # noqa: E402,F401


# -- weak references ---------------------------------------------------------------------------------

def weak_proxy(obj: Any) -> WeakRef:
    """A reference to a memo object that does not keep it alive when stored."""
    if not isinstance(obj, MemoBase):
        raise TypeError(f"weak_proxy expects a memo object, not {type(obj).__name__}")
    px = obj._px
    return WeakRef(px.workspace, px.uuid, obj._oid, px.class_info(type(obj)).class_id, obj)


def expired(obj: Any) -> bool:
    """True if a (weak) reference no longer points to a live object."""
    if isinstance(obj, WeakRef):
        return obj.resolve() is None
    if isinstance(obj, MemoBase):
        return bool(obj._flags & F_DEAD)
    raise TypeError(f"expired expects a memo object or weak reference, not {type(obj).__name__}")
