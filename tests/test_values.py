"""Storable values (API.md §4): round trips through the codec and through memo attributes."""

import datetime as dt
import decimal
import enum
import math
import uuid as uuidlib

import pytest
from hypothesis import given, settings, strategies as st

import dbzero as db0


@db0.memo(singleton=True, id="tests.Holder")
class Holder:
    def __init__(self):
        self.value = None


UTC = dt.timezone.utc

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False),
    st.text(), st.binary(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(), st.datetimes(), st.datetimes(timezones=st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))])),
    st.times(), st.times(timezones=st.just(dt.timezone(dt.timedelta(hours=-3)))),
    st.timedeltas(), st.uuids(),
)


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, decimal.Decimal):
        return type(b) is decimal.Decimal and a.as_tuple() == b.as_tuple()
    return type(a) is type(b) and a == b and (not hasattr(a, "tzinfo") or a.utcoffset() == b.utcoffset())


@settings(max_examples=300, deadline=None)
@given(scalars)
def test_codec_round_trip(value):
    from dbzero_ext.codec import Codec
    codec = Codec(lambda v: None, None, lambda v: None, None)
    assert _same(codec.unpack(codec.pack(value)), value)


@settings(max_examples=100, deadline=None)
@given(st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12))
def test_codec_nested_round_trip(value):
    from dbzero_ext.codec import Codec
    codec = Codec(lambda v: None, None, lambda v: None, None)
    back = codec.unpack(codec.pack(value))
    assert repr(back) == repr(value) or back == value


def test_attribute_round_trip_in_fresh_process(db, root, fresh):
    h = Holder()
    values = {
        "nul": "a\x00b", "big": 2**100, "neg": -(2**70), "dec": decimal.Decimal("1.2345678901234567890123"),
        "dec2": decimal.Decimal("12.50"), "tz_time": dt.time(3, 4, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "td": dt.timedelta(days=2, seconds=5, microseconds=7), "uid": uuidlib.UUID(int=12345),
        "aware": dt.datetime(1995, 5, 17, 8, 30, tzinfo=UTC), "naive": dt.datetime(2020, 1, 2, 3, 4, 5, 6),
        "day": dt.date(2026, 1, 12), "t": dt.time(1, 2, 3, 4), "neg0": -0.0, "inf": float("inf"),
        "raw": b"\x00\xff", "flag": True, "nothing": None, "ratio": 0.25,
    }
    for key, value in values.items():
        setattr(h, key, value)
        assert _same(getattr(h, key), value), key
    db0.commit()
    db0.close()
    code = f"""
        import dbzero as db0
        @db0.memo(singleton=True, id="tests.Holder")
        class Holder:
            def __init__(self): self.value = None
        db0.init({root!r}, prefix="test", read_write=False)
        h = db0.fetch(Holder)
        print(repr({{k: v for k, v in sorted(vars(h).items()) if k != "value"}}))
    """
    out = fresh(code).stdout.strip()
    db0.init(root, prefix="test")
    import datetime, uuid, decimal as dmod  # noqa: F401 - names used by eval
    back = eval(out, {"datetime": dt, "decimal": decimal, "Decimal": decimal.Decimal, "UUID": uuidlib.UUID,
                      "inf": float("inf")})
    for key, value in values.items():
        assert _same(back[key], value), key


class PyEnum(enum.Enum):
    A = 1


@pytest.mark.parametrize("bad", [bytearray(b"x"), 1 + 2j, frozenset([1]), PyEnum.A, object(), range(3), len])
def test_unsupported_values_leave_attribute_unchanged(db, bad):
    h = Holder()
    h.value = "keep"
    with pytest.raises(AttributeError, match="Unsupported attribute type"):
        h.bad = bad
    assert not hasattr(h, "bad")
    with pytest.raises(AttributeError):
        h.value = bad
    assert h.value == "keep"
    with pytest.raises(TypeError):
        h.value = bad  # also a TypeError (db0.UnsupportedAttributeError)
    with pytest.raises(db0.UnsupportedTypeError):
        h.value = bad


def test_timezone_without_fixed_offset_is_rejected(db):
    class Weird(dt.tzinfo):
        def utcoffset(self, d):
            return None

    h = Holder()
    with pytest.raises(TypeError):
        h.value = dt.datetime(2020, 1, 1, tzinfo=Weird())


def test_enum_values(db, root):
    Color = db0.enum("Color", ["RED", "GREEN"])
    assert Color.RED is Color["RED"] is Color[0]
    assert len(Color) == 2 and Color.values() == (Color.RED, Color.GREEN)
    assert str(Color.RED) == "RED" and repr(Color.RED) == "<EnumValue Color.RED>"
    assert Color.RED != "RED"
    with pytest.raises(AttributeError):
        Color.BLUE
    with pytest.raises(RuntimeError, match="Enum value not found: BLUE"):
        Color["BLUE"]
    with pytest.raises(IndexError):
        Color[5]
    with pytest.raises(TypeError):
        Color.RED < Color.GREEN
    assert db0.enum("Color", ["RED", "GREEN"]) is Color
    with pytest.raises(RuntimeError, match="different values"):
        db0.enum("Color", ["RED"])
    assert db0.is_enum(Color) and db0.is_enum_value(Color.RED) and not db0.is_enum_value("RED")

    @db0.enum(values=["LOW", "HIGH"])
    class Level:
        pass

    assert Level.HIGH.name == "HIGH"
    h = Holder()
    h.value = Color.GREEN
    assert h.value is Color.GREEN
    db0.commit()
    db0.close()
    db0.init(root, prefix="test")
    assert db0.fetch(Holder).value is Color.GREEN


def test_enum_readable_before_definition(db, root, fresh):
    fresh(f"""
        import dbzero as db0
        @db0.memo(singleton=True, id="tests.Holder")
        class Holder:
            def __init__(self): self.value = None
        Mood = db0.enum("Mood", ["SAD", "GLAD"])
        db0.init({root!r}, prefix="enums")
        Holder().value = Mood.GLAD
    """)
    out = fresh(f"""
        import dbzero as db0
        @db0.memo(singleton=True, id="tests.Holder")
        class Holder:
            def __init__(self): self.value = None
        db0.init({root!r}, prefix="enums")
        v = db0.fetch(Holder).value
        print(repr(v))
        Mood = db0.enum("Mood", ["SAD", "GLAD"])
        print(v is Mood.GLAD, Mood[0])
    """)
    assert out.stdout.split("\n")[:2] == ["<EnumValue Mood.GLAD>", "True SAD"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                             | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=8),
                max_size=20),
       st.binary(max_size=8))
def test_record_reader_matches_codec(slots, header):
    # Object records are read by dbzero_ext/records.pxi, not msgpack: same values, any
    # header length, including the ABSENT marker of deleted attributes.
    from dbzero_ext.codec import ABSENT, Codec
    from dbzero_ext.core import read_record
    codec = Codec(lambda v: None, None, lambda v: None, None)
    record = [17, 3, ABSENT, *slots]
    raw = header + codec.pack(record)
    back = read_record(raw, len(header), codec._ext_hook)
    assert repr(back) == repr(codec.unpack(codec.pack(record)))


@pytest.mark.parametrize("raw", [b"", b"\x93\x11", b"\x92\x11\xd9\x05ab", b"\x91\xc1", b"\x81"])
def test_record_reader_rejects_truncated_or_invalid_records(raw):
    from dbzero_ext.codec import Codec
    from dbzero_ext.core import read_record
    codec = Codec(lambda v: None, None, lambda v: None, None)
    with pytest.raises(ValueError):
        read_record(raw, 0, codec._ext_hook)


_record_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=300), st.binary(max_size=300),
    st.tuples(st.integers(), st.text(max_size=3)), st.dates(), st.decimals(allow_nan=False, allow_infinity=False))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([f"f{i}" for i in range(20)]), _record_values, max_size=20),
       st.lists(st.sampled_from([f"f{i}" for i in range(20)]), max_size=20, unique=True))
def test_record_writer_matches_msgpack_bytes(fields, layout):
    # Records are written by dbzero_ext/records.pxi: byte for byte what the codec's msgpack
    # packer makes of [class_id, refcount, slot...], absent slots included.
    from dbzero_ext.codec import ABSENT, Codec
    from dbzero_ext.core import ClassInfo, pack_record, record_of
    from dbzero_ext.memo import MemoBase
    codec = Codec(lambda v: None, None, lambda v: None, None)

    class Plain(MemoBase):
        pass

    obj = MemoBase.__new__(Plain)
    vars(obj).update(fields)
    obj._rc = len(fields)
    info = ClassInfo(20, "tests:Plain", list(layout), Plain)
    packed = pack_record(obj, info, codec.pack)
    expected = codec.pack(record_of(obj, info))
    assert packed == expected
    back = codec.unpack(packed)
    assert back[:2] == [20, len(fields)]
    assert {info.fields[i]: v for i, v in enumerate(back[2:]) if v is not ABSENT} == fields


def test_record_writer_survives_packing_another_record_midway():
    # The codec fallback runs Python code; if that code packs another record, the outer
    # record must come out whole.
    from dbzero_ext.codec import Codec
    from dbzero_ext.core import ClassInfo, pack_record, record_of
    from dbzero_ext.memo import MemoBase
    codec = Codec(lambda v: None, None, lambda v: None, None)

    class Plain(MemoBase):
        pass

    inner, outer = MemoBase.__new__(Plain), MemoBase.__new__(Plain)
    vars(inner).update(x="inner" * 50, y=7)
    vars(outer).update(a=1, b=(1, 2), c="outer" * 60)
    info = ClassInfo(21, "tests:Plain", [], Plain)
    inner_packed = []

    def nested_pack(value):
        inner_packed.append(pack_record(inner, info, codec.pack))
        return codec.pack(value)

    packed = pack_record(outer, info, nested_pack)
    assert inner_packed and inner_packed[0] == codec.pack(record_of(inner, info))
    assert packed == codec.pack(record_of(outer, info))
