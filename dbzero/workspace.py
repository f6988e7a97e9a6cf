"""The process-wide workspace: storage root, open prefixes, configuration, autocommit.

Threading model: one re-entrant lock per workspace (``Workspace.lock``) serialises every
operation that touches LMDB or the in-memory object state - public API calls, attribute
writes, commits and the autocommit thread.  Reads of loaded attributes take no lock (they
are plain dict reads under the GIL).  A long-running call in one thread therefore delays
the others; this is the price of a simple, provably consistent model.
"""

from __future__ import annotations

import _thread
import atexit
import base64
import datetime as _dt
import decimal
import os
import sys
import threading
import uuid as _uuid
from typing import Any, Dict, List, Optional, Tuple

from dbzero_ext import memo as _memo
from dbzero_ext.codec import decode_uuid, encode_uuid, qualified_name

from . import errors
from . import coordinator, sharing
from .cache import chunk_cache
from .prefix import Prefix, WeakRef
from .storage import Storage

DEFAULT_AUTOCOMMIT_INTERVAL_MS = 367
DEFAULT_CACHE_SIZE = 2 << 30
FILE_SUFFIX = ".db0"
OPEN_KWARGS = {"autocommit", "slab_size", "meta_io_step_size", "page_io_step_size", "lock_flags",
               "shared", "refresh_interval",
               "durability"}

_memo.configure(errors.ReferenceError, errors.ObjectClosedError, errors.ReadOnlyError, WeakRef)

# Memo classes defined in this process, by stored type id.
_class_registry: Dict[str, type] = {}
_unknown_classes: Dict[str, type] = {}
_workspace: Optional["Workspace"] = None
_global_lock = threading.RLock()


def register_memo_class(cls: type) -> None:
    _class_registry[cls.__db0_type_id__] = cls


def normalize_prefix_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"prefix name must be a str, not {type(name).__name__}")
    stripped = name.strip("/")
    if not stripped or any(part in ("", ".", "..") for part in stripped.split("/")):
        raise errors.BadPrefixError(f"Invalid prefix name: {name!r}")
    return stripped


def current() -> "Workspace":
    """The initialised workspace, or NotInitializedError."""
    ws = _workspace
    if ws is None:
        raise errors.NotInitializedError("dbzero not initialized")
    return ws


def current_or_none() -> Optional["Workspace"]:
    return _workspace


class Workspace:
    """Everything ``db0.init`` sets up; ``db0.close()`` tears it down."""

    def __init__(self, root: str, *, autocommit: bool = True,
                 autocommit_interval: int = DEFAULT_AUTOCOMMIT_INTERVAL_MS,
                 cache_size: int = DEFAULT_CACHE_SIZE, lang_cache_size: int = 1024,
                 lock_flags: Optional[dict] = None, no_auto_migrate: bool = False,
                 restricted: bool = False, durability: str = "full", shared: bool = False,
                 refresh_interval: float = sharing.DEFAULT_REFRESH_INTERVAL_MS) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.config = {
            "cache_size": cache_size, "lang_cache_size": lang_cache_size,
            "autocommit": autocommit, "autocommit_interval": autocommit_interval,
            "no_auto_migrate": no_auto_migrate, "restricted": restricted,
        }
        self.cache_capacity = cache_size
        chunk_cache.set_capacity(cache_size)    # the decoded-chunk cache is process-wide
        self.lock_flags = dict(lock_flags or {})
        self.durability = durability
        self.default_shared = bool(shared)          # open(..., "rw") of shared writers
        self.refresh_interval = sharing.check_refresh_interval(refresh_interval)
        self.lock = _global_lock
        self.prefixes: Dict[str, Prefix] = {}
        self.by_uuid: Dict[bytes, Prefix] = {}
        self.stack: List[str] = []          # open order; the last one is current
        self.current_name: Optional[str] = None
        self.enums: Dict[str, Any] = {}
        self.atomic_depth = 0
        self.locked_depth = 0
        self._uuid_paths: Dict[bytes, str] = {}
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._autocommit_running = False

    # -- prefixes ------------------------------------------------------------------

    def path_of(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/")) + FILE_SUFFIX

    def open(self, name: str, mode: str = "rw", *, make_current: bool = True,
             autocommit: Optional[bool] = None, lock_flags: Optional[dict] = None,
             shared: Optional[bool] = None, refresh_interval: Optional[float] = None) -> Prefix:
        if mode not in ("rw", "r"):
            raise errors.BadPrefixError(f"Invalid access type: {mode}")
        name = normalize_prefix_name(name)
        if refresh_interval is not None:
            refresh_interval = sharing.check_refresh_interval(refresh_interval)
        shared = self.default_shared if shared is None else bool(shared)
        if shared and autocommit:
            raise ValueError("autocommit is not available for shared writers (open(..., shared=True)): "
                             "commit with db0.commit() or db0.transaction()")
        with self.lock:
            px = self.prefixes.get(name)
            if px is None:
                flags = dict(self.lock_flags)
                flags.update(lock_flags or {})
                readonly = mode == "r"
                shared = shared and not readonly
                try:
                    storage = (sharing.SharedStorage if shared else Storage)(
                        self.path_of(name), readonly=readonly,
                        lock_blocking=bool(flags.get("blocking", False)),
                        lock_timeout=float(flags.get("timeout", 0) or 0),
                        durability=self.durability)
                except errors.PrefixNotFoundError:
                    raise errors.PrefixNotFoundError(f"Prefix: {name} not found") from None
                if not readonly:
                    try:
                        coordinator.recover_on_open(self, storage)
                    except BaseException:
                        storage.close()
                        raise
                ac = self.config["autocommit"] if autocommit is None else autocommit
                if shared:
                    ac = False      # a conflict must surface in user code (docs/processes.md)
                px = Prefix(self, name, storage, readonly=readonly, autocommit=ac)
                self.prefixes[name] = px
                self.by_uuid[px.uuid] = px
                sharing.attach(self, px, refresh_interval)
                if not readonly or ac:
                    self._ensure_autocommit()
            elif autocommit is not None and not px.shared:
                px.autocommit = autocommit
            if make_current:
                if name in self.stack:
                    self.stack.remove(name)
                self.stack.append(name)
                self.current_name = name
            return px

    def current_prefix(self) -> Prefix:
        if self.current_name is None:
            raise errors.NoDefaultPrefixError("dbzero: no default prefix exists")
        return self.prefixes[self.current_name]

    def get_prefix(self, name: Optional[str]) -> Prefix:
        """An open prefix by name (None: the current one)."""
        if name is None:
            return self.current_prefix()
        px = self.prefixes.get(normalize_prefix_name(name))
        if px is None:
            raise errors.PrefixNotFoundError(f"Prefix with name {name} not found")
        return px

    def prefix_for_read(self, name: Optional[str]) -> Prefix:
        """Like get_prefix, but opens a prefix that exists on disk read-only."""
        if name is None:
            return self.current_prefix()
        norm = normalize_prefix_name(name)
        px = self.prefixes.get(norm)
        if px is None:
            if not os.path.exists(self.path_of(norm)):
                raise errors.PrefixNotFoundError(f"Prefix: {name} not found")
            px = self.open(norm, "r", make_current=False)
        return px

    def prefix_for_class(self, cls: type) -> Prefix:
        name = cls.__db0_prefix__
        if name is None:
            return self.current_prefix()
        px = self.prefixes.get(name)
        if px is None:
            px = self.open(name, "rw", make_current=False)
        return px

    def prefix_by_uuid(self, prefix_uuid: bytes, auto_open: bool = True) -> Prefix:
        px = self.by_uuid.get(prefix_uuid)
        if px is not None and not px.closed:
            return px
        if auto_open:
            path = self._find_prefix_file(prefix_uuid)
            if path is not None:
                rel = os.path.relpath(path, self.root)[: -len(FILE_SUFFIX)]
                return self.open(rel.replace(os.sep, "/"), "r", make_current=False)
        raise errors.PrefixNotFoundError(f"Prefix: {prefix_uuid.hex()} not found")

    def _find_prefix_file(self, prefix_uuid: bytes) -> Optional[str]:
        path = self._uuid_paths.get(prefix_uuid)
        if path is not None and os.path.exists(path):
            return path
        import lmdb
        for path in self.prefix_files():
            if path in (px.storage.path for px in self.prefixes.values()):
                continue
            try:
                env = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=16)
                try:
                    with env.begin() as txn:
                        meta = env.open_db(b"meta", txn=txn, create=False)
                        found = txn.get(b"uuid", db=meta)
                finally:
                    env.close()
            except Exception:
                continue
            if found is not None:
                self._uuid_paths[found] = path
                if found == prefix_uuid:
                    return path
        return None

    def prefix_files(self) -> List[str]:
        out = []
        if not os.path.isdir(self.root):
            return out
        for dirpath, _dirs, files in os.walk(self.root):
            for fname in files:
                if fname.endswith(FILE_SUFFIX):
                    out.append(os.path.realpath(os.path.join(dirpath, fname)))
        return sorted(out)

    def prefix_names_on_disk(self) -> List[str]:
        names = []
        for path in self.prefix_files():
            rel = os.path.relpath(path, os.path.realpath(self.root))[: -len(FILE_SUFFIX)]
            names.append(rel.replace(os.sep, "/"))
        return names

    def close_prefix(self, name: str) -> None:
        with self.lock:
            try:
                norm = normalize_prefix_name(name)
            except (errors.BadPrefixError, TypeError):
                return
            px = self.prefixes.pop(norm, None)
            if px is None:
                return
            self.by_uuid.pop(px.uuid, None)
            if norm in self.stack:
                self.stack.remove(norm)
            if self.current_name == norm:
                self.current_name = self.stack[-1] if self.stack else None
            px.close()

    def close_all(self) -> None:
        self._stop.set()
        if self._autocommit_running and threading.get_ident() != self._autocommit_ident():
            self._stopped.wait(timeout=5)
        with self.lock:
            first_error = None
            try:
                # One commit of everything first: changes spanning prefixes land together.
                coordinator.commit_all(self, list(self.prefixes.values()))
            except Exception as exc:
                first_error = exc
            for name in list(self.prefixes):
                try:
                    self.close_prefix(name)
                except Exception as exc:  # close the others regardless
                    first_error = first_error or exc
            if first_error is not None:
                raise first_error

    def _autocommit_ident(self) -> Optional[int]:
        return getattr(self, "_loop_ident", None)

    # -- commits ---------------------------------------------------------------------

    def commit(self, name: Optional[str] = None) -> None:
        with self.lock:
            if self.atomic_depth:
                raise errors.TransactionError("db0.commit cannot run inside an active db0.atomic")
            if name is not None:
                self.get_prefix(name).commit()
            else:
                # Several changed prefixes commit atomically together (dbzero/coordinator.py).
                coordinator.commit_all(self, list(self.prefixes.values()))

    def _ensure_autocommit(self) -> None:
        if self._autocommit_running:
            return
        self._autocommit_running = True
        self._stop.clear()
        self._stopped.clear()
        # _thread does not wait for the new thread to be scheduled (threading.Thread.start
        # does, which made opening a prefix slow and noisy on a busy machine).
        _thread.start_new_thread(self._autocommit_loop, ())

    def _autocommit_loop(self) -> None:
        try:
            self._autocommit_body()
        finally:
            self._autocommit_running = False
            self._stopped.set()

    def _autocommit_body(self) -> None:
        self._loop_ident = threading.get_ident()
        interval = max(self.config["autocommit_interval"], 1) / 1000.0
        while not self._stop.wait(interval):
            if not self.lock.acquire(timeout=interval):
                continue
            try:
                if self.atomic_depth or self.locked_depth:
                    continue
                # Readers are refreshed by dbzero/sharing.py on their own interval.
                coordinator.commit_all(self, [px for px in self.prefixes.values()
                                              if px.autocommit and not px.readonly
                                              and not px.closed and px.has_changes()])
            except Exception as exc:  # keep committing later; surface the problem
                sys.stderr.write(f"dbzero: autocommit failed: {exc!r}\n")
            finally:
                self.lock.release()

    # -- identities -----------------------------------------------------------------------

    @staticmethod
    def format_uuid(prefix_uuid: bytes, oid: int) -> str:
        return encode_uuid(prefix_uuid, oid)

    @staticmethod
    def parse_uuid(text: Any) -> Tuple[bytes, int]:
        if not isinstance(text, str):
            raise errors.InvalidUUIDError(f"Invalid UUID: {text!r}")
        try:
            return decode_uuid(text)
        except ValueError:
            raise errors.InvalidUUIDError(f"Invalid UUID: {text!r}") from None

    # -- classes ---------------------------------------------------------------------------

    def resolve_class(self, type_id: str) -> type:
        cls = _class_registry.get(type_id)
        if cls is not None:
            return cls
        module, _, qualname = type_id.rpartition(":") if ":" in type_id else ("", "", type_id)
        if module:
            try:
                __import__(module)
                cls = _class_registry.get(type_id)
                if cls is not None:
                    return cls
            except Exception:
                pass
        cls = _unknown_classes.get(type_id)
        if cls is None:
            cls = make_unknown_class(type_id)
            _unknown_classes[type_id] = cls
        return cls

    def class_tags(self, px: Prefix, cls: type) -> List[bytes]:
        tags = []
        for klass in (cls, *cls.__db0_memo_bases__):
            tags.append(b"C" + px.class_info(klass).class_id.to_bytes(4, "big"))
        return tags

    # -- values -----------------------------------------------------------------------------

    def enum_of(self, value: Any):
        from .enums import EnumValue
        if isinstance(value, EnumValue):
            return value.type_name, value.name
        return None

    def enum_value(self, type_name: str, value_name: str):
        from .enums import enum_value_for
        return enum_value_for(type_name, value_name)

    def check_storable(self, value: Any) -> None:
        t = type(value)
        if t in _EXT_TYPES:
            if t is _dt.time or t is _dt.datetime:
                if value.tzinfo is not None and value.utcoffset() is None:
                    raise errors.UnsupportedTypeError(f"time zone of {value!r} has no fixed offset")
            return
        if self.enum_of(value) is not None:
            return
        if isinstance(value, type) and qualified_name(value) is not None:
            return
        if t.__name__ == "function":
            if value.__name__ == "<lambda>":
                raise errors.UnsupportedTypeError("Lambda functions are not allowed as CALLABLE members")
            if qualified_name(value) is not None and "<locals>" not in value.__qualname__:
                return
        raise errors.UnsupportedTypeError(f"Type unsupported by dbzero: {t.__name__}")


_EXT_TYPES = frozenset({_dt.datetime, _dt.date, _dt.time, _dt.timedelta, decimal.Decimal, _uuid.UUID})


def make_unknown_class(type_id: str) -> type:
    """A stand-in memo class for stored objects whose class this process cannot import."""
    name = type_id.rpartition(".")[2] or "MemoBase"
    return type(name, (_memo.MemoBase,), {
        "__db0_type_id__": type_id, "__db0_singleton__": False, "__db0_prefix__": None,
        "__db0_no_default_tags__": False, "__db0_memo_bases__": (), "__db0_unknown__": True,
        "__module__": "dbzero", "__repr__": lambda self: f"<{type_id} instance (class not importable)>",
    })


def init(root: Any, **kwargs: Any) -> None:
    global _workspace
    with _global_lock:
        if _workspace is not None:
            raise errors.AlreadyInitializedError("dbzero already initialized")
        if root is None:
            raise TypeError("db0.init needs a storage root directory")
        prefix = kwargs.pop("prefix", None)
        read_write = kwargs.pop("read_write", True)
        known = {"autocommit", "autocommit_interval", "cache_size", "lang_cache_size", "lock_flags",
                 "no_auto_migrate", "restricted", "durability", "shared", "refresh_interval"}
        if "no_auto_migration" in kwargs:
            kwargs["no_auto_migrate"] = kwargs.pop("no_auto_migration")
        options = {k: v for k, v in kwargs.items() if k in known}
        if "cache_size" in options:
            _check_cache_size(options["cache_size"])
        if options.get("durability", "full") not in ("full", "fast"):
            raise ValueError("durability must be 'full' or 'fast'")
        ws = Workspace(root, **options)
        _workspace = ws
        if prefix is not None:
            try:
                ws.open(prefix, "rw" if read_write else "r")
            except BaseException:
                _workspace = None
                ws.close_all()
                raise


def _check_cache_size(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"cache size must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"cache size must be positive, got {value}")


def close(prefix_name: Optional[str] = None) -> None:
    global _workspace
    with _global_lock:
        ws = _workspace
        if ws is None:
            return
        if prefix_name is not None:
            ws.close_prefix(prefix_name)
            return
        _workspace = None
        ws.close_all()


def _close_at_exit() -> None:
    # Scripts rarely call db0.close(); committing here keeps "no save calls" true.
    try:
        close()
    except Exception as exc:
        sys.stderr.write(f"dbzero: closing at exit failed: {exc!r}\n")


atexit.register(_close_at_exit)


def _after_fork_in_child() -> None:
    # The autocommit thread does not exist in a forked child; restart it lazily.
    ws = _workspace
    if ws is not None:
        ws._autocommit_running = False
        ws._stop = threading.Event()
        ws._stopped = threading.Event()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
