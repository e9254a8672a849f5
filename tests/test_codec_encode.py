"""encode_point is the inverse of decode + scaled, for every type and order."""

from __future__ import annotations

import pytest

from polling import codec

SAMPLES: dict[str, list[codec.Value]] = {
    "int16": [-32768, -1, 0, 12345, 32767],
    "uint16": [0, 1, 65535],
    "int32": [-(2**31), -70000, 2**31 - 1],
    "uint32": [0, 3_000_000_123, 2**32 - 1],
    "int64": [-(2**63), -(10**15) - 7, 2**63 - 1],
    "uint64": [0, 2**60 + 123, 2**64 - 1],
    "float32": [-1.5, 0.0, 1234.25],
    "float64": [-1e300, 0.1, 123456.789],
    "bool": [True, False],
    "string": ["", "AB", "pump-7"],
}


@pytest.mark.parametrize("order", codec.ORDERS)
@pytest.mark.parametrize("type_", codec.TYPES)
def test_round_trip_every_type_and_order(type_: str, order: str) -> None:
    count = 4 if type_ == "string" else None
    for value in SAMPLES[type_]:
        words = codec.encode_point(value, type_, order, count)
        assert len(words) == codec.width(type_, count)
        assert codec.decode(words, type_, order) == value


@pytest.mark.parametrize("order", codec.ORDERS)
@pytest.mark.parametrize(
    ("type_", "scale", "offset", "value", "raw"),
    [
        ("int16", 0.1, 0.0, "-12.3", -123),
        ("uint16", 0.01, 0.0, "655.35", 65535),
        ("int32", 0.5, -40.0, "10", 100),
        ("uint32", 0.001, 0.0, "3000000.5", 3_000_000_500),
        ("int64", 10.0, 0.0, "-1e12", -(10**11)),
        ("uint64", 1.0, 0.0, str(2**64 - 1), 2**64 - 1),  # exact, not through a float
        ("float32", 2.0, 1.0, "5.5", 2.25),
        ("float64", 0.1, 0.0, "1", 10.0),
    ],
)
def test_scale_and_offset_are_inverted(
    order: str, type_: str, scale: float, offset: float, value: str, raw: int | float
) -> None:
    words = codec.encode_point(value, type_, order, scale=scale, offset=offset)
    assert codec.decode(words, type_, order) == raw
    assert codec.scaled(raw, scale, offset) == pytest.approx(float(value))


def test_integers_round_to_nearest() -> None:
    assert codec.unscaled("1.26", "int16", 0.1, 0.0) == 13
    assert codec.unscaled("-1.26", "int16", 0.1, 0.0) == -13


@pytest.mark.parametrize(
    ("value", "type_", "scale", "needle"),
    [
        ("32768", "int16", 1.0, "out of range for int16"),
        ("-1", "uint16", 1.0, "out of range for uint16"),
        ("6553.6", "uint16", 0.1, "out of range for uint16"),
        (str(2**64), "uint64", 1.0, "out of range for uint64"),
        ("1e39", "float32", 1.0, "out of range for float32"),
        ("abc", "float64", 1.0, "not a number"),
        ("nan", "int32", 1.0, "not a number"),
        ("maybe", "bool", 1.0, "not a bool"),
        ("toolongtext", "string", 1.0, "longer than 8"),
    ],
)
def test_values_that_do_not_fit_are_refused(
    value: str, type_: str, scale: float, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        codec.encode_point(value, type_, count=4, scale=scale)


def test_bool_spellings() -> None:
    assert codec.encode_point("on", "bool") == [1]
    assert codec.encode_point("false", "bool") == [0]


def test_string_outside_latin1_is_refused_with_one_line() -> None:
    # '€' is not latin-1: it was a raw UnicodeEncodeError naming the codec, not the value.
    with pytest.raises(ValueError, match="not latin-1") as caught:
        codec.encode_point("h€", "string", count=2)
    assert not isinstance(caught.value, UnicodeError)


def test_integer_offset_keeps_every_digit_of_a_64_bit_value() -> None:
    # (value - offset) went through a float: 2**62 + 1 - 5 was written as 2**62.
    assert codec.unscaled(str(2**62 + 1), "int64", 1.0, 5.0) == 2**62 - 4
    assert codec.unscaled(str(2**64 - 2), "uint64", 1.0, -1.0) == 2**64 - 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("type_", ["float32", "float64"])
def test_non_finite_floats_are_refused(value: str, type_: str) -> None:
    # float32 refused inf but took nan; float64 wrote nan, inf and 1e400 (read as inf).
    with pytest.raises(ValueError, match="not a finite number"):
        codec.encode_point(value, type_)
