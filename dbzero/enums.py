"""``db0.enum``: named enumerations whose values can be stored, used as keys and as tags.

Values are identified by (enum name, value name), so a stored value reads back even in a
process that has not defined the enum yet; defining it later yields the same objects.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from . import errors

_enum_types: Dict[str, "EnumType"] = {}


class EnumValue:
    """One member of a :class:`EnumType`; hashable, unordered, equal only to itself."""

    __slots__ = ("type_name", "name", "_enum", "__weakref__")

    def __init__(self, enum: "EnumType", name: str) -> None:
        self._enum = enum
        self.type_name = enum.name
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<EnumValue {self.type_name}.{self.name}>"

    def __hash__(self) -> int:
        return hash(("db0.enum", self.type_name, self.name))

    def __reduce__(self):
        return (enum_value_for, (self.type_name, self.name))


class EnumType:
    """An enum type: ``Color.RED``, ``Color["RED"]``, ``Color[0]``, ``len(Color)``."""

    def __init__(self, name: str, values: Iterable[str]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_values", [])
        object.__setattr__(self, "_by_name", {})
        for value in values:
            self._add(value)

    def _add(self, value_name: str) -> EnumValue:
        if not isinstance(value_name, str):
            raise TypeError(f"enum value names must be str, not {type(value_name).__name__}")
        existing = self._by_name.get(value_name)
        if existing is not None:
            return existing
        member = EnumValue(self, value_name)
        self._values.append(member)
        self._by_name[value_name] = member
        return member

    def __getattr__(self, attr: str) -> EnumValue:
        by_name = object.__getattribute__(self, "_by_name")
        try:
            return by_name[attr]
        except KeyError:
            raise AttributeError(f"enum {self.name} has no value {attr!r}") from None

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError("db0 enum types are read-only")

    def __getitem__(self, key: Union[int, str]) -> EnumValue:
        if isinstance(key, int):
            return self._values[key]
        try:
            return self._by_name[key]
        except KeyError:
            raise errors.Error(f"Enum value not found: {key}") from None

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> Tuple[EnumValue, ...]:
        return tuple(self._values)

    def __repr__(self) -> str:
        return f"<db0.enum {self.name} {[v.name for v in self._values]}>"


def enum(name_or_cls: Any = None, values: Optional[List[str]] = None):
    """Define (or look up) an enum.

    ``db0.enum("Color", ["RED", "GREEN"])`` or as a decorator ``@db0.enum(values=[...])``.
    Redefining with the same values returns the same type; different values raise
    ``db0.Error``.
    """
    if values is None and isinstance(name_or_cls, (list, tuple)):
        raise TypeError("db0.enum(name, values): the name comes first")
    if name_or_cls is None or isinstance(name_or_cls, type):
        def decorate(cls: type) -> EnumType:
            return _define(cls.__name__, values or [])
        return decorate(name_or_cls) if name_or_cls is not None else decorate
    if not isinstance(name_or_cls, str):
        raise TypeError("db0.enum needs a name (str)")
    return _define(name_or_cls, list(values or []))


def _define(name: str, values: List[str]) -> EnumType:
    existing = _enum_types.get(name)
    if existing is None:
        enum_type = EnumType(name, values)
        _enum_types[name] = enum_type
        return enum_type
    known = [v.name for v in existing._values]
    if getattr(existing, "_placeholder", False):
        # Created while decoding stored values before the enum was defined.
        if set(known) <= set(values):
            object.__setattr__(existing, "_placeholder", False)
            for value in values:
                existing._add(value)
            object.__setattr__(existing, "_values",
                               sorted(existing._values, key=lambda v: values.index(v.name)))
            return existing
    elif known == list(dict.fromkeys(values)):
        return existing
    raise errors.Error(f"Enum type already defined with different values: {name}")


def enum_value_for(type_name: str, value_name: str) -> EnumValue:
    enum_type = _enum_types.get(type_name)
    if enum_type is None:
        enum_type = EnumType(type_name, [])
        object.__setattr__(enum_type, "_placeholder", True)
        _enum_types[type_name] = enum_type
    member = enum_type._by_name.get(value_name)
    if member is None:
        member = enum_type._add(value_name)
    return member


def is_enum(obj: Any) -> bool:
    return isinstance(obj, EnumType)


def is_enum_value(obj: Any) -> bool:
    return isinstance(obj, EnumValue)
