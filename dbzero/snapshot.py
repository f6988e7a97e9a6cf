"""Snapshots: read-only views of prefixes at a past state (``db0.snapshot``).

A snapshot maps each prefix it covers to a state number and reads that prefix through a
:class:`~dbzero.storage.StorageView`, wrapped in an ordinary read-only :class:`Prefix`, so
memo objects, collections, tags and indexes all read as of that state.  Objects from a
snapshot are distinct read-only proxies; they expire when the snapshot is closed.

While a ``with db0.snapshot(...)`` block is active, module-level ``db0.fetch``,
``db0.exists`` and ``db0.find`` read from it (a context-local "current view"), which is what
the product README's time-travel example relies on.
"""

from __future__ import annotations

import contextvars
from typing import Any, Dict, Optional, Union

from . import errors, workspace
from .prefix import F_DEAD, MemoBase, Prefix
from .storage import StorageView

_active_view: contextvars.ContextVar[Optional["Snapshot"]] = contextvars.ContextVar("db0_view", default=None)

# Snapshots open in this process: compaction never prunes a state one of them reads.
_open_snapshots: "set[Snapshot]" = set()


def active_view() -> Optional["Snapshot"]:
    return _active_view.get()


def oldest_open_state(px: Prefix) -> Optional[int]:
    states = [snap._states.get(px.name) for snap in _open_snapshots if not snap.closed]
    states = [s for s in states if s is not None]
    return min(states) if states else None


class Snapshot:
    """A frozen view of one or more prefixes; use as a context manager or close() it."""

    def __init__(self, ws, states: Dict[str, int]) -> None:
        self._ws = ws
        self._states = states          # prefix name -> state (others: last committed)
        self._views: Dict[str, Prefix] = {}
        self._tokens = []
        self.closed = False
        _open_snapshots.add(self)

    # -- prefixes --------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise errors.ObjectClosedError("WorkspaceView is closed")

    def view_of(self, live: Prefix) -> Prefix:
        """The read-only prefix that reads ``live`` at this snapshot's state."""
        self._check()
        if getattr(live, "snapshot", None) is not None:     # a view of another snapshot
            if live.snapshot is self:
                return live
            live = self._ws.prefix_by_uuid(live.uuid)
        view = self._views.get(live.name)
        if view is None:
            state = self._states.get(live.name)
            if state is None:
                state = live.state_num
                self._states[live.name] = state
            view = Prefix(self._ws, live.name, StorageView(live.storage, state),
                          readonly=True, autocommit=False)
            view.snapshot = self
            self._views[live.name] = view
        return view

    def _view_for(self, prefix: Optional[str]) -> Prefix:
        ws = self._ws
        live = ws.current_prefix() if prefix is None else ws.prefix_for_read(prefix)
        return self.view_of(live)

    # -- reads --------------------------------------------------------------------------

    def get_state_num(self, prefix: Optional[str] = None) -> int:
        return self._view_for(prefix).state_num

    def fetch(self, identifier: Any, expected_type: Optional[type] = None,
              prefix: Optional[str] = None) -> Any:
        """Like ``db0.fetch`` but as of the snapshot's state."""
        self._check()
        ws = self._ws
        with ws.lock:
            if isinstance(identifier, str):
                prefix_uuid, oid = ws.parse_uuid(identifier)
                obj = self.view_of(ws.prefix_by_uuid(prefix_uuid)).fetch(oid)
            elif isinstance(identifier, type):
                from .api import _fetch_singleton_in
                obj = _fetch_singleton_in(self._singleton_prefix(identifier, prefix), identifier)
            else:
                raise errors.Error("Invalid argument type")
        if expected_type is not None and not isinstance(obj, expected_type):
            raise errors.Error("Object type mismatch")
        return obj

    def _singleton_prefix(self, cls: type, prefix: Optional[str]) -> Prefix:
        ws = self._ws
        if prefix is None and getattr(cls, "__db0_prefix__", None):
            return self.view_of(ws.prefix_for_class(cls))
        return self._view_for(prefix)

    def exists(self, identifier: Any, expected_type: Optional[type] = None,
               prefix: Optional[str] = None) -> bool:
        if not isinstance(identifier, (str, type)):
            raise errors.Error("Invalid argument type")
        try:
            obj = self.fetch(identifier, None, prefix)
        except errors.PrefixNotFoundError:
            raise
        except errors.Error:
            return False
        return expected_type is None or isinstance(obj, expected_type)

    def find(self, *criteria: Any, prefix: Optional[str] = None):
        """Like ``db0.find`` but as of the snapshot's state."""
        from .tags import find_in
        self._check()
        return find_in(self, criteria, prefix)

    def __contains__(self, prefix_name: str) -> bool:
        try:
            name = workspace.normalize_prefix_name(prefix_name)
        except (TypeError, errors.Error):
            return False
        return name in self._states or name in self._ws.prefixes

    # -- life cycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Expire every object read from this snapshot."""
        if self.closed:
            return
        self.closed = True
        _open_snapshots.discard(self)
        for view in self._views.values():
            view.close()
        self._views.clear()

    def __enter__(self) -> "Snapshot":
        self._check()
        self._tokens.append(_active_view.set(self))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._tokens:
            _active_view.reset(self._tokens.pop())
        self.close()
        return False

    def __del__(self) -> None:
        try:
            _open_snapshots.discard(self)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<db0.Snapshot {self._states}{' closed' if self.closed else ''}>"


def snapshot(state_spec: Union[None, int, Dict[str, int]] = None) -> Snapshot:
    """A read-only view of the data at a committed state.

    ``None``: every prefix at its last committed state.  ``int``: the current prefix at
    that state (others at their last committed).  ``{prefix: state}``: per prefix.
    Raises StateNotAvailableError for a state that does not exist (yet) or was pruned,
    PrefixNotFoundError for an unknown prefix, TypeError for another kind of spec.
    """
    ws = workspace.current()
    with ws.lock:
        if state_spec is None:
            spec: Dict[str, int] = {}
        elif isinstance(state_spec, bool) or not isinstance(state_spec, (int, dict)):
            raise TypeError(f"snapshot() takes None, an int or a dict, not {type(state_spec).__name__}")
        elif isinstance(state_spec, int):
            spec = {ws.current_prefix().name: state_spec}
        else:
            spec = {}
            for name, state in state_spec.items():
                px = ws.prefix_for_read(name)
                spec[px.name] = state
        states: Dict[str, int] = {}
        for name, state in spec.items():
            px = ws.get_prefix(name)
            if isinstance(state, bool) or not isinstance(state, int):
                raise TypeError(f"state number must be an int, not {type(state).__name__}")
            if state < px.storage.history_floor or state > px.state_num or state < 1:
                raise errors.StateNotAvailableError(
                    f"Requested state number is not available ({name}): {state}")
            states[name] = state
        for name, px in ws.prefixes.items():
            states.setdefault(name, px.state_num)
        return Snapshot(ws, states)


def get_snapshot_of(obj: Any) -> Any:
    """The snapshot an object was read from (None for live objects)."""
    px = getattr(obj, "_px", None)
    if px is None:
        raise TypeError(f"{type(obj).__name__} is not a dbzero object")
    return getattr(px, "snapshot", None)


def compact(prefix: Optional[str] = None, before: Optional[int] = None) -> int:
    """Prune history so that states older than ``before`` can no longer be read.

    Defaults: the current prefix; ``before`` = the last committed state.  History still
    needed by a snapshot open in this process is kept.  Returns the number of history
    entries removed.  Reading a pruned state raises StateNotAvailableError.
    """
    ws = workspace.current()
    with ws.lock:
        px = ws.get_prefix(prefix)
        px.check_writable()
        px.commit()
        target = px.state_num if before is None else before
        oldest = oldest_open_state(px)
        if oldest is not None:
            target = min(target, oldest)
        return px.storage.compact(target)
