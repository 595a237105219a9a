"""lossproof.query.gofloat.parse_go_float against Go's strconv.ParseFloat(s, 64) (the answers below
are Go's: printed by a Go program with strconv.FormatFloat(f, 'x', -1, 64), None where it answered
an error), and histogram_quantile with the ``le`` values Prometheus 2.42 was asked about."""

from __future__ import annotations

import math

import pytest

from lossproof.query.gofloat import parse_go_float

GO = [
    (" 1", None),
    ("1 ", None),
    ("\t1", None),
    ("1\n", None),
    ("1_0", "0x1.4p+03"),
    ("1_23.50_0_0e+1_2", "0x1.c14a5684ep+46"),
    ("_1", None),
    ("1_", None),
    ("1__0", None),
    ("1_.5", None),
    ("1._5", None),
    ("1.5_0", "0x1.8p+00"),
    ("1e_5", None),
    ("1e5_", None),
    ("1e3_0", "0x1.93e5939a08ceap+99"),
    ("0x1p-1", "0x1p-01"),
    ("0X1P-1", "0x1p-01"),
    ("0x1", None),
    ("0x1.8", None),
    ("0x.8p1", "0x1p+00"),
    ("0x1.p0", "0x1p+00"),
    ("0x_1p0", "0x1p+00"),
    ("0x_.8p1", None),
    ("0x1_p0", None),
    ("0x1p1_0", "0x1p+10"),
    ("0x1p_1", None),
    ("-0x1.8p1", "-0x1.8p+01"),
    ("0x1p", None),
    ("0x", None),
    ("0xp1", None),
    ("0x1e3", None),
    ("0xABCp-4", "0x1.578p+07"),
    ("0x1.fffffffffffff8p1023", None),
    ("0x1p-1075", "0x0p+00"),
    ("0x1p-1074", "0x1p-1074"),
    ("0x1p1024", None),
    ("0x0p99999", "0x0p+00"),
    ("1e400", None),
    ("-1e400", None),
    ("1e-400", "0x0p+00"),
    ("4.9e-324", "0x1p-1074"),
    ("2e-324", "0x0p+00"),
    ("1.7976931348623159e308", None),
    ("1.7976931348623158e308", "0x1.fffffffffffffp+1023"),
    ("0e99999999999", "0x0p+00"),
    ("1e99999999999", None),
    ("inf", "+Inf"),
    ("+Inf", "+Inf"),
    ("-INFINITY", "-Inf"),
    ("infinity", "+Inf"),
    ("infin", None),
    ("infinityx", None),
    ("nan", "NaN"),
    ("NaN", "NaN"),
    ("-nan", None),
    ("+nan", None),
    (" nan", None),
    ("nan ", None),
    ("1.", "0x1p+00"),
    (".5", "0x1p-01"),
    (".", None),
    ("", None),
    ("+", None),
    ("-", None),
    ("1e", None),
    ("1e+", None),
    ("+.5e-3", "0x1.0624dd2f1a9fcp-11"),
    ("+.e1", None),
    ("0b101", None),
    ("0o7", None),
    ("1d", None),
    ("1f", None),
    ("\u0661", None),  # an Arabic-Indic one: float() takes it
    ("1E5", "0x1.86ap+16"),
    ("00012", "0x1.8p+03"),
    ("-0", "-0x0p+00"),
    ("1_000.5", "0x1.f44p+09"),
    ("++1", None),
    ("0.1", "0x1.999999999999ap-04"),
]


@pytest.mark.parametrize(("text", "go"), GO)
def test_as_go_parses(text: str, go: str | None) -> None:
    got = parse_go_float(text)
    if go is None:
        assert got is None
    else:
        want = float.fromhex(go)
        assert got is not None
        if math.isnan(want):
            assert math.isnan(got)
        else:  # (the sign of a zero too)
            assert (got, math.copysign(1, got)) == (want, math.copysign(1, want))


def test_long_digit_strings() -> None:
    assert parse_go_float("9" * 400) is None  # out of range: Go's ErrRange
    assert parse_go_float("0." + "0" * 400 + "1") == 0.0  # an underflow is no error
