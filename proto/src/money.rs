//! Money as integer micro-units. Decimals exist only at the JSON edge: [`Micros::from_decimal_f64`]
//! on the way in, [`Micros`]'s `Serialize` on the way out. Nothing inside ever adds floats.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-units per whole currency unit (1 USD = 1,000,000 micros).
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// The largest amount accepted on the wire: 1,000,000,000 units. Bounds every sum we make
/// far below `i64::MAX` and keeps the f64 edge exact.
pub const AMOUNT_MAX_MICROS: i64 = 1_000_000_000 * MICROS_PER_UNIT;

/// An amount of money in micro-units of the vertical's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i64);

/// Why a decimal amount was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a finite number")]
    NotFinite,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most 1000000000")]
    TooLarge,
    #[error("must have at most 6 decimal places")]
    TooPrecise,
}

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// Converts a decimal amount as JSON carries it (an f64) to micros. Refuses negative,
    /// non-finite, huge, and over-precise values rather than rounding money silently.
    pub fn from_decimal_f64(v: f64) -> Result<Micros, MoneyError> {
        if !v.is_finite() {
            return Err(MoneyError::NotFinite);
        }
        if v < 0.0 {
            return Err(MoneyError::Negative);
        }
        // -0.0 is zero, as `-0` (read as the integer 0) is: the same answer for both.
        if v == 0.0 {
            return Ok(Micros(0));
        }
        // Fast path (no formatting), the same answer: below 10^9 two multiples of 10^-6
        // never round to the same f64 (its spacing there is under 1.2 x 10^-7), so when
        // m x 10^-6 rounds to `v`, it is the shortest decimal that does, i.e. what the
        // formatting below would print and read. -0.0 is left to it (it prints "-0").
        if v.is_sign_positive() && v < 1e9 {
            let m = (v * MICROS_PER_UNIT as f64).round();
            if m / MICROS_PER_UNIT as f64 == v {
                return Ok(Micros(m as i64));
            }
        }
        Micros::from_decimal_f64_formatted(v)
    }

    /// [`from_decimal_f64`](Micros::from_decimal_f64) by formatting: Rust prints the
    /// shortest decimal that round-trips, never in exponent form: that is the number the
    /// sender wrote, which we then read exactly.
    fn from_decimal_f64_formatted(v: f64) -> Result<Micros, MoneyError> {
        Micros::parse_decimal(&format!("{v}"))
    }

    /// Parses a decimal string such as `"12.50"` exactly (configuration uses this).
    pub fn parse_decimal(s: &str) -> Result<Micros, MoneyError> {
        let s = s.trim();
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if int.starts_with('-') {
            return Err(MoneyError::Negative);
        }
        if int.is_empty() && frac.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(MoneyError::NotFinite);
        }
        // Zeros that change nothing are not precision or size: `"1.0000000"` is 1, as the
        // number `1.0000000` is, and `"04"` is 4 (black-box round 49: the string form was
        // refused as too precise where the number was read).
        let frac = frac.trim_end_matches('0');
        let int = int.trim_start_matches('0');
        if frac.len() > 6 {
            return Err(MoneyError::TooPrecise);
        }
        if int.len() > 10 {
            return Err(MoneyError::TooLarge);
        }
        let whole: i64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| MoneyError::TooLarge)?
        };
        let mut frac_micros: i64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_micros += i64::from(b - b'0') * 10_i64.pow(5 - i as u32);
        }
        let total = whole * MICROS_PER_UNIT + frac_micros;
        if total > AMOUNT_MAX_MICROS {
            return Err(MoneyError::TooLarge);
        }
        Ok(Micros(total))
    }

    /// The amount as an f64 for the JSON edge only.
    pub fn as_decimal_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_UNIT as f64
    }

    pub fn saturating_sub(self, other: Micros) -> Micros {
        Micros(self.0.saturating_sub(other.0))
    }

    pub fn saturating_add(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }

    /// `self * pct_bp / 10_000`, rounded down: a share in basis points (8000 = 80 %).
    pub fn share_bp(self, bp: u32) -> Micros {
        Micros(((i128::from(self.0) * i128::from(bp)) / 10_000) as i64)
    }
}

impl fmt::Display for Micros {
    /// Two decimals at least, six at most: `12.50`, `0.125`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS_PER_UNIT as u64;
        let frac = abs % MICROS_PER_UNIT as u64;
        let mut digits = format!("{frac:06}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "{sign}{whole}.{digits}")
    }
}

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The shortest f64 text that round-trips is the decimal itself for any amount
        // with at most six decimals below 2^53 micros.
        s.serialize_f64(self.as_decimal_f64())
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Micros::from_decimal_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_reads_what_formatting_reads() {
        let mut values = vec![
            0.0,
            -0.0,
            1e-7,
            1e-6,
            0.1 + 0.2,
            12.5,
            18.0,
            0.000_001,
            0.123_456_7,
            999_999_999.999_999,
            999_999_999.999_999_9,
            1e9,
            1e9 + 1.0,
            5e15,
            1.0 / 3.0,
            f64::MIN_POSITIVE,
            4_503_599_627.370_496,
        ];
        // Prices as buyers send them (cents and micros), and values just off them.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let micros = (x % 2_000_000_000_000) as f64;
            values.push(micros / 1e6);
            values.push((i as f64) / 100.0);
            values.push(f64::from_bits((micros / 1e6).to_bits() + 1));
            values.push(f64::from_bits(x >> 2));
        }
        for v in values {
            if v.is_finite() && v > 0.0 {
                assert_eq!(
                    Micros::from_decimal_f64(v),
                    Micros::from_decimal_f64_formatted(v),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn decimal_edges() {
        assert_eq!(Micros::from_decimal_f64(12.5), Ok(Micros(12_500_000)));
        assert_eq!(Micros::from_decimal_f64(0.1), Ok(Micros(100_000)));
        assert_eq!(Micros::from_decimal_f64(0.000001), Ok(Micros(1)));
        assert_eq!(
            Micros::from_decimal_f64(0.0000001),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(Micros::from_decimal_f64(-1.0), Err(MoneyError::Negative));
        assert_eq!(Micros::from_decimal_f64(-0.0), Ok(Micros(0)));
        assert_eq!(Micros::from_decimal_f64(0.0), Ok(Micros(0)));
        assert_eq!(
            Micros::from_decimal_f64(f64::NAN),
            Err(MoneyError::NotFinite)
        );
        assert_eq!(Micros::from_decimal_f64(2e9), Err(MoneyError::TooLarge));
        assert_eq!(Micros::parse_decimal("12.50"), Ok(Micros(12_500_000)));
        assert_eq!(Micros::parse_decimal("3"), Ok(Micros(3_000_000)));
        assert_eq!(
            Micros::parse_decimal("0.1234567"),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(Micros::parse_decimal("-1"), Err(MoneyError::Negative));
        // Zeros that change nothing are neither precision nor size.
        assert_eq!(Micros::parse_decimal("1.0000000"), Ok(Micros(1_000_000)));
        assert_eq!(Micros::parse_decimal("0.12345600000"), Ok(Micros(123_456)));
        assert_eq!(
            Micros::parse_decimal("000000000000004.50"),
            Ok(Micros(4_500_000))
        );
        assert_eq!(
            Micros::parse_decimal("0.12345610"),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(
            Micros::parse_decimal("00010000000000"),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(Micros::parse_decimal("x"), Err(MoneyError::NotFinite));
        assert_eq!(Micros(12_500_000).to_string(), "12.50");
        assert_eq!(Micros(125_000).to_string(), "0.125");
        assert_eq!(serde_json::to_string(&Micros(12_500_000)).unwrap(), "12.5");
    }

    proptest::proptest! {
        #[test]
        fn json_round_trip(m in 0i64..AMOUNT_MAX_MICROS) {
            let text = serde_json::to_string(&Micros(m)).unwrap();
            let back: f64 = text.parse().unwrap();
            proptest::prop_assert_eq!(Micros::from_decimal_f64(back), Ok(Micros(m)));
        }
    }
}
