import math

import pytest

from polling import codec
from polling.errors import DecodeError

CASES = [
    # type, order, registers, value
    ("int16", "ABCD", [0xFFFF], -1),
    ("int16", "ABCD", [0x8000], -32768),
    ("uint16", "ABCD", [0x1234], 0x1234),
    ("uint16", "BADC", [0x3412], 0x1234),
    ("uint16", "DCBA", [0x3412], 0x1234),
    ("uint16", "CDAB", [0x1234], 0x1234),
    ("uint32", "ABCD", [0x1234, 0x5678], 0x12345678),
    ("uint32", "DCBA", [0x7856, 0x3412], 0x12345678),
    ("uint32", "BADC", [0x3412, 0x7856], 0x12345678),
    ("uint32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("int32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("int32", "BADC", [0xFFFF, 0xFEFF], -2),
    ("int32", "DCBA", [0xFEFF, 0xFFFF], -2),
    ("float32", "ABCD", [0x3F80, 0x0000], 1.0),
    ("float32", "CDAB", [0x0000, 0x3F80], 1.0),
    ("float32", "BADC", [0x803F, 0x0000], 1.0),
    ("float32", "DCBA", [0x0000, 0x803F], 1.0),
    ("float32", "ABCD", [0xC148, 0x0000], -12.5),
    ("int64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    ("int64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    ("int64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    ("int64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    ("int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
    ("uint64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], 2**64 - 1),
    ("uint64", "CDAB", [0x0000, 0x0000, 0x0000, 0x0001], 2**48),
    ("float64", "ABCD", [0x3FF0, 0, 0, 0], 1.0),
    ("float64", "DCBA", [0, 0, 0, 0xF03F], 1.0),
    ("float64", "CDAB", [0x0000, 0x0000, 0x0000, 0x4059], 100.0),
    ("bool", "ABCD", [0], False),
    ("bool", "ABCD", [7], True),
    ("string", "ABCD", [0x4142, 0x4344, 0x0000], "ABCD"),
    ("string", "BADC", [0x4241, 0x4443, 0x0000], "ABCD"),
    ("string", "ABCD", [0x4849, 0x2020], "HI"),
]


@pytest.mark.parametrize(("type_", "order", "registers", "value"), CASES)
def test_decode_known_patterns(type_, order, registers, value):
    assert codec.decode(registers, type_, order) == value


# A bool read from 7 and a string padded with spaces decode alike but encode canonically.
CANONICAL = [c for c in CASES if c[2] not in ([7], [0x4849, 0x2020])]


@pytest.mark.parametrize(("type_", "order", "registers", "value"), CANONICAL)
def test_encode_is_the_inverse(type_, order, registers, value):
    count = len(registers) if type_ == "string" else None
    assert codec.encode(value, type_, order, count) == registers


def test_float32_nan_decodes_as_nan():
    assert math.isnan(codec.decode([0x7FC0, 0x0000], "float32"))


def test_wrong_width_is_a_decode_error():
    with pytest.raises(DecodeError, match="float32 needs 2 registers"):
        codec.decode([0x3F80], "float32")


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "value"),
    [
        (100, 0.1, -5.0, 5.0),
        (250, 1.0, 0.0, 250),
        (2**63 - 1, 1.0, 0.0, 2**63 - 1),  # unscaled integers keep every digit
        (-40, 0.5, 10.0, -10.0),
        (-9484, 0.1, 0.0, -948.4),
        (3, 0.1, 0.0, 0.3),
        (True, 2.0, 1.0, True),
        ("abc", 2.0, 1.0, "abc"),
    ],
)
def test_scale_and_offset(raw, scale, offset, value):
    assert codec.scaled(raw, scale, offset) == value


def test_widths():
    assert [codec.width(t) for t in ("int16", "uint32", "float32", "int64", "float64")] == [
        1,
        2,
        2,
        4,
        4,
    ]
    assert codec.width("string", 8) == 8
