"""The dbzero exception hierarchy.

Every engine error is a :class:`Error`, which subclasses ``RuntimeError`` because the
reference implementation raises ``RuntimeError`` for engine errors and code written for it
catches that.  Where Python has a natural class for a problem (a missing attribute, a bad
argument type, an index out of range) the dbzero class also subclasses that one, so both
``except AttributeError`` and ``except dbzero.ReadOnlyError`` work.
"""

from __future__ import annotations


class Error(RuntimeError):
    """Base class of every error raised by dbzero."""


class NotInitializedError(Error):
    """``db0.init()`` has not been called, or ``db0.close()`` ended the workspace."""


class AlreadyInitializedError(Error):
    """``db0.init()`` was called twice without ``db0.close()`` in between."""


class NoDefaultPrefixError(Error):
    """An operation needs the current prefix but none is open."""


class BadPrefixError(Error, ValueError):
    """A prefix name or open mode is invalid."""


class PrefixNotFoundError(Error):
    """A prefix (by name or by the id embedded in a UUID) does not exist."""


class PrefixLockedError(Error):
    """Another process holds the read-write lock of a prefix."""


class ReadOnlyError(Error, AttributeError):
    """A write was attempted on a read-only prefix, a snapshot or a read-only object."""


class ClassNotFoundError(Error):
    """A singleton or class was looked up in a prefix that has never stored it."""


class ObjectNotFoundError(Error, KeyError):
    """A UUID is well formed but names no stored object."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidUUIDError(Error, ValueError):
    """A string is not a well-formed dbzero UUID."""


class ReferenceError(Error):  # noqa: A001 - the reference exposes db0.ReferenceError
    """A memo object was deleted, expired (cross-prefix reference) or rolled back."""


class ObjectClosedError(Error):
    """The proxy belongs to a prefix or snapshot that has been closed."""


class UnsupportedTypeError(Error, TypeError):
    """A value of a type dbzero cannot store was given."""


class UnsupportedAttributeError(UnsupportedTypeError, AttributeError):
    """A memo attribute was assigned a value of a type dbzero cannot store."""


class ReferencedObjectError(Error):
    """``db0.delete`` was asked to delete an object that is still referenced."""


class TransactionError(Error):
    """Misuse of ``db0.atomic()`` / ``db0.commit()`` (e.g. commit inside atomic)."""


class ConflictError(Error):
    """A concurrent writer changed an object this process was about to overwrite."""


class StateNotAvailableError(Error, ValueError):
    """A state number that does not exist (yet) or whose history was pruned."""


class FormatError(Error):
    """A prefix file has an unknown format version or is damaged."""


class StorageError(Error):
    """LMDB reported an error; the message names the operation that failed."""


class MigrateError(Error):
    """A migration of stored data failed."""


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, Exception)]
