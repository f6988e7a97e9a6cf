"""The ``@db0.memo`` decorator.

The decorator returns a new class with the same name that subclasses the user's class and
:class:`dbzero.MemoBase`.  Constructing it creates the object in its prefix (the class's
``prefix=``, else the current one) and runs the user's ``__init__``; if ``__init__`` raises,
the object is discarded and nothing is stored.  Singleton classes return their existing
instance and ignore the arguments.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional, TypeVar, Union, overload

from dbzero_ext import core as _core

from . import errors, workspace
from .prefix import COLLECTION_KINDS, MemoBase
from .storage import Storage

T = TypeVar("T", bound=type)


def _type_id(cls: type, explicit: Optional[str]) -> str:
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit:
            raise TypeError("memo(id=...) must be a non-empty str")
        return explicit
    module = cls.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        module = os.path.splitext(os.path.basename(path))[0] if path else "__main__"
    return f"{module}:{cls.__qualname__}"


def _memo_repr(self) -> str:
    module, _, qualname = type(self).__db0_type_id__.rpartition(":")
    try:
        uid = self._px.uuid_of(self._oid)
    except Exception:
        uid = "?"
    return f"<{module}.{qualname} instance uuid={uid}>"


def singleton_of(px, cls: type):
    """The singleton instance of ``cls`` in prefix ``px``, or None."""
    info = px.class_info(cls, create=False)
    if info is None or not info.singleton_oid:
        return None
    return px.try_get_object(info.singleton_oid)


def _reserve_oids(px):
    from . import sharing
    return sharing.reserve_oids(px)


_core.configure(errors, COLLECTION_KINDS, _reserve_oids, singleton_of, workspace, Storage)

_MEMO_OPTIONS = {"singleton", "prefix", "no_default_tags", "id"}


def memo(cls: Optional[type] = None, /, **options: Any):
    """Make a class persistent: its instances live in a dbzero prefix.

    Forms: ``@memo``, ``@memo()``, ``@memo(singleton=True, prefix="name",
    no_default_tags=True, id="stable-id")``.

    - ``singleton``: one instance per prefix; later constructor calls return it.
    - ``prefix``: instances always go to this prefix (opened read-write on first use).
    - ``no_default_tags``: instances do not carry their class as a tag (``find(Cls)``
      then needs another criterion).
    - ``id``: a stable type id, so the class can be renamed or moved between modules.

    Raises TypeError for an unknown keyword.
    """
    for key in options:
        if key not in _MEMO_OPTIONS:
            raise TypeError(f"'{key}' is an invalid keyword argument for memo()")

    def decorate(user_cls: type) -> type:
        return _make_memo_class(user_cls, **options)

    if cls is not None:
        return decorate(cls)
    return decorate


def _make_memo_class(user_cls: type, *, singleton: bool = False, prefix: Optional[str] = None,
                     no_default_tags: bool = False, id: Optional[str] = None) -> type:
    if not isinstance(user_cls, type):
        raise TypeError("@db0.memo decorates classes")
    if getattr(user_cls, "__slots__", None):
        raise TypeError(f"memo class {user_cls.__qualname__} must not define __slots__")
    bases = (user_cls,) if issubclass(user_cls, MemoBase) else (user_cls, MemoBase)
    memo_bases = tuple(
        klass for klass in user_cls.__mro__
        if isinstance(klass, type) and "__db0_type_id__" in klass.__dict__
    )
    namespace = {
        "__module__": user_cls.__module__,
        "__qualname__": user_cls.__qualname__,
        "__doc__": user_cls.__doc__,
        "__db0_type_id__": _type_id(user_cls, id),
        "__db0_singleton__": bool(singleton),
        "__db0_prefix__": workspace.normalize_prefix_name(prefix) if prefix is not None else None,
        "__db0_no_default_tags__": bool(no_default_tags),
        "__db0_memo_bases__": memo_bases,
        "__new__": staticmethod(_core.memo_new),
        "__db0_owner__": None,
        "__hash__": MemoBase.__hash__,
    }
    if user_cls.__repr__ is object.__repr__:
        namespace["__repr__"] = _memo_repr
    new_cls = type(user_cls)(user_cls.__name__, bases, namespace)
    new_cls.__db0_owner__ = new_cls
    new_cls.__init__ = _core.make_init(new_cls)
    workspace.register_memo_class(new_cls)
    _core.install_slots(new_cls)
    return new_cls


def is_memo(obj: Any) -> bool:
    """True for memo classes and memo instances."""
    if isinstance(obj, type):
        return issubclass(obj, MemoBase) and "__db0_type_id__" in obj.__dict__
    return isinstance(obj, MemoBase)
