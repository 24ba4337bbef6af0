//! Rates with their unit in the type: the protocol, the API and the designer count bytes per
//! second, link shaping (tc) counts bits per second, and the only way between them is an
//! explicit conversion.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rate in bytes per second (transfer bandwidth, dirty rate).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BytesPerSec(pub u64);

/// A rate in bits per second (link rates as `tc` and operators write them).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BitsPerSec(pub u64);

impl BytesPerSec {
    /// The same rate in bits per second (saturating: no real link overflows u64 bits/s).
    pub fn to_bits(self) -> BitsPerSec {
        BitsPerSec(self.0.saturating_mul(8))
    }

    /// The rate as a float, for the model's arithmetic.
    pub fn as_f64(self) -> f64 {
        self.0 as f64
    }
}

impl BitsPerSec {
    /// The same rate in bytes per second, rounded down to whole bytes.
    pub fn to_bytes(self) -> BytesPerSec {
        BytesPerSec(self.0 / 8)
    }
}

impl fmt::Display for BytesPerSec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} B/s ({})", self.0, self.to_bits())
    }
}

impl fmt::Display for BitsPerSec {
    /// Operators think in Mbit/s: shown with the largest unit that keeps a whole number part.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            r if r >= 1_000_000_000 => write!(f, "{:.1} Gbit/s", b / 1e9),
            r if r >= 1_000_000 => write!(f, "{:.1} Mbit/s", b / 1e6),
            r if r >= 1_000 => write!(f, "{:.1} kbit/s", b / 1e3),
            r => write!(f, "{r} bit/s"),
        }
    }
}

/// Whole milliseconds of `d` as logs, reports and the wire carry them; saturates at `u64::MAX`
/// (585 million years: a Duration's u128 millis never get there in practice).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole microseconds of `d`, saturating like [`millis`].
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `x` rounded toward zero as a count (bytes, pages, bytes/s): negative and NaN become 0,
/// beyond `u64::MAX` saturates. That is what Rust's `as` does for floats; said once here, so
/// every model-to-count conversion reads as the deliberate step it is.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn saturating_u64(x: f64) -> u64 {
    x as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_explicit_and_exact_on_whole_bytes() {
        assert_eq!(
            BytesPerSec(125_000_000).to_bits(),
            BitsPerSec(1_000_000_000)
        );
        assert_eq!(
            BitsPerSec(1_000_000_000).to_bytes(),
            BytesPerSec(125_000_000)
        );
        assert_eq!(BitsPerSec(15).to_bytes(), BytesPerSec(1));
        assert_eq!(BytesPerSec(u64::MAX).to_bits(), BitsPerSec(u64::MAX));
    }

    #[test]
    fn rates_read_like_an_operator_writes_them() {
        assert_eq!(BitsPerSec(50_000_000).to_string(), "50.0 Mbit/s");
        assert_eq!(BitsPerSec(1_000_000_000).to_string(), "1.0 Gbit/s");
        assert_eq!(BitsPerSec(999).to_string(), "999 bit/s");
        assert_eq!(BytesPerSec(125_000).to_string(), "125000 B/s (1.0 Mbit/s)");
    }

    #[test]
    fn float_and_duration_conversions_saturate() {
        assert_eq!(saturating_u64(-1.5), 0);
        assert_eq!(saturating_u64(f64::NAN), 0);
        assert_eq!(saturating_u64(2.9), 2);
        assert_eq!(saturating_u64(1e30), u64::MAX);
        assert_eq!(millis(Duration::from_micros(2_500)), 2);
        assert_eq!(micros(Duration::from_secs(1)), 1_000_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn json_carries_the_bare_number() {
        assert_eq!(serde_json::to_string(&BytesPerSec(7)).unwrap(), "7");
    }
}
