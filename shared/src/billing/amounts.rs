//! Money and limit figures: their documented maxima, and the checked
//! arithmetic every amount of money or tokens goes through.
//!
//! Money is integer micro-dollars in a `u64`. Amounts are only multiplied and
//! summed here, with checked operations: an overflow is an error the caller
//! must handle, never a wrapped or saturated number that bills the wrong
//! amount. Storage counters are signed (`i64`, as DynamoDB and SQLite add
//! them); [`to_counter`] and [`from_counter`] are the only crossings, with no
//! `as` between signed and unsigned.
//!
//! The admin API refuses any figure above its maximum with a 400 that names the
//! field and the maximum ([`check_max`]). The maxima are far above real use and
//! keep every product and monthly sum of them inside an `i64`.

use crate::error::{ApiError, ApiResult};

/// Dearest price accepted: $1,000 per 1,000 tokens.
pub const MAX_PRICE_PER_1K_TOKENS_MICROS: u64 = 1_000_000_000;
/// Largest monthly budget accepted: one billion dollars.
pub const MAX_BUDGET_MICROS: u64 = 1_000_000_000_000_000;
/// Highest requests-per-minute limit accepted.
pub const MAX_REQUESTS_PER_MINUTE: u64 = 10_000_000;
/// Highest tokens-per-minute limit accepted.
pub const MAX_TOKENS_PER_MINUTE: u64 = 10_000_000_000;
/// Most inputs one request may carry (also OpenAI's limit).
pub const MAX_INPUTS_PER_REQUEST: u64 = 2048;
/// Latest expiry accepted for a key: the end of year 9999, Unix seconds.
pub const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// An amount or count that does not fit where it has to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} is out of range")]
pub struct Overflow {
    pub what: &'static str,
}

/// Micro-dollars for `tokens` at `price_per_1k` micro-dollars per 1,000 tokens,
/// rounded up to a whole micro-dollar.
pub fn cost_micros(tokens: u64, price_per_1k: u64) -> Result<u64, Overflow> {
    let what = "cost_micros";
    let product = tokens.checked_mul(price_per_1k).ok_or(Overflow { what })?;
    Ok(product.div_ceil(1000))
}

/// `a + b` for money or token figures.
pub fn add(a: u64, b: u64, what: &'static str) -> Result<u64, Overflow> {
    a.checked_add(b).ok_or(Overflow { what })
}

/// The sum of money or token figures.
pub fn sum(items: impl IntoIterator<Item = u64>, what: &'static str) -> Result<u64, Overflow> {
    items.into_iter().try_fold(0u64, |acc, x| add(acc, x, what))
}

/// A figure as a signed storage counter (an atomic add's delta).
pub fn to_counter(value: u64, what: &'static str) -> Result<i64, Overflow> {
    i64::try_from(value).map_err(|_| Overflow { what })
}

/// A stored counter as a figure: a negative counter (never written by this
/// code) reads as 0.
pub fn from_counter(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The signed difference `actual - reserved`, for settling a counter.
pub fn delta(actual: u64, reserved: u64, what: &'static str) -> Result<i64, Overflow> {
    let d = i128::from(actual) - i128::from(reserved);
    i64::try_from(d).map_err(|_| Overflow { what })
}

/// A limit or a cap as the `i64` a storage counter is compared with: one above
/// `i64::MAX` can never be reached by the counter, so it reads as `i64::MAX`.
pub fn saturating_counter(limit: u64) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Refuses `value` above `max`: 400 naming the field and the maximum.
pub fn check_max(field: &'static str, value: u64, max: u64) -> ApiResult<()> {
    if value > max {
        return Err(ApiError::invalid_param(
            field,
            format!("{field} is {value}; the maximum is {max}"),
        ));
    }
    Ok(())
}

/// Micro-dollars as dollars for messages ("$0.000100"), without floats.
pub fn dollars(micros: u64) -> String {
    format!("${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_round_up_and_overflow_is_an_error() {
        assert_eq!(cost_micros(0, 20), Ok(0));
        assert_eq!(cost_micros(1, 20), Ok(1));
        assert_eq!(cost_micros(1000, 20), Ok(20));
        assert_eq!(cost_micros(1001, 20), Ok(21));
        assert!(cost_micros(u64::MAX, 2).is_err());
        // The largest request at the dearest price fits with room to spare.
        let tokens = MAX_INPUTS_PER_REQUEST * 512;
        assert!(cost_micros(tokens, MAX_PRICE_PER_1K_TOKENS_MICROS).unwrap() < 1 << 42);
    }

    #[test]
    fn counters_cross_signedness_only_when_the_value_fits() {
        assert_eq!(to_counter(5, "x"), Ok(5));
        assert!(to_counter(u64::MAX, "x").is_err());
        assert_eq!(from_counter(-1), 0);
        assert_eq!(from_counter(7), 7);
        assert_eq!(delta(3, 10, "x"), Ok(-7));
        assert!(delta(u64::MAX, 0, "x").is_err());
        assert_eq!(saturating_counter(u64::MAX), i64::MAX);
        assert_eq!(sum([1, 2, 3], "x"), Ok(6));
        assert!(sum([u64::MAX, 1], "x").is_err());
        assert_eq!(dollars(100), "$0.000100");
        assert_eq!(dollars(5_000_000), "$5.000000");
    }
}
