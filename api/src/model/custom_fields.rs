//! What a risk's `custom_fields` may hold beyond being a JSON object: numbers Postgres can store
//! and give back, and a stored form no larger than the body that brought it. Postgres keeps a
//! JSON number as `numeric` and prints it without an exponent, so `1e-16383` (8 characters) comes
//! back as 16,387, and a page of risks could swell a thousandfold between the write and the read.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::request_limits::MAX_BODY_BYTES;

/// Largest magnitude of a number: one near the edge of `f64` would not read back.
pub const NUMBER_LIMIT: f64 = 1e300;
/// Most digits after the decimal point a number keeps once stored (`1e-300` has 300).
pub const MOST_DECIMALS: u64 = 300;

/// Why `custom_fields` cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomFieldsError {
    #[error("custom_fields numbers must lie between -{NUMBER_LIMIT:e} and {NUMBER_LIMIT:e}")]
    OutOfRange,
    #[error("custom_fields numbers may have at most {MOST_DECIMALS} digits after the decimal point")]
    TooPrecise,
    #[error("custom_fields take {0} bytes once numbers are written out in full (at most {MAX_BODY_BYTES})")]
    TooLargeStored(u64),
    #[error("custom_fields names and strings must not contain the NUL character (U+0000)")]
    Nul,
}

/// Checks every number in `fields`, the size of their stored form, and that no name or string in
/// them holds a NUL.
pub fn check(fields: &BTreeMap<String, Value>) -> Result<(), CustomFieldsError> {
    let growth = growth_of_fields(fields)?;
    let stored = serde_json::to_vec(fields).map_or(u64::MAX, |text| text.len() as u64).saturating_add(growth);
    if stored > MAX_BODY_BYTES as u64 {
        return Err(CustomFieldsError::TooLargeStored(stored));
    }
    Ok(())
}

/// How many characters longer `value` prints once stored than as sent, after checking its numbers
/// (and that no name or string in it holds a NUL, which Postgres cannot store).
fn growth_of(value: &Value) -> Result<u64, CustomFieldsError> {
    match value {
        Value::Number(number) => {
            if !number.as_f64().is_some_and(|n| n.abs() <= NUMBER_LIMIT) {
                return Err(CustomFieldsError::OutOfRange);
            }
            let text = number.to_string();
            Ok(stored_len(&text)?.saturating_sub(text.len() as u64))
        }
        Value::Array(items) => growth_of_all(items),
        Value::Object(fields) => growth_of_fields(fields),
        Value::String(text) if text.contains('\0') => Err(CustomFieldsError::Nul),
        _ => Ok(0),
    }
}

/// [`growth_of`] summed over the values of an object's `fields`, whose names hold no NUL either.
fn growth_of_fields<'a>(fields: impl IntoIterator<Item = (&'a String, &'a Value)>) -> Result<u64, CustomFieldsError> {
    fields.into_iter().try_fold(0, |sum: u64, (name, value)| {
        if name.contains('\0') {
            return Err(CustomFieldsError::Nul);
        }
        Ok(sum.saturating_add(growth_of(value)?))
    })
}

/// [`growth_of`] summed over `values`.
fn growth_of_all<'a>(values: impl IntoIterator<Item = &'a Value>) -> Result<u64, CustomFieldsError> {
    values.into_iter().try_fold(0, |sum: u64, value| Ok(sum.saturating_add(growth_of(value)?)))
}

/// The length of a JSON number written as `text` once Postgres prints it (see [`stored_number`]).
fn stored_len(text: &str) -> Result<u64, CustomFieldsError> {
    Ok(stored_number(text)?.len() as u64)
}

/// A JSON number written as `text`, as Postgres prints it back from `jsonb`: no exponent, the
/// integer part without leading zeros, as many decimals as it was written with less its exponent
/// (`1.50e1` is `15.0`, `120e-1` is `12.0`), and no sign on zero. Refused before anything is
/// written out when it would have too many decimals or integer digits.
fn stored_number(text: &str) -> Result<String, CustomFieldsError> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        // An exponent too long for an i64 is out of range either way; saturate it.
        Some((mantissa, exponent)) => {
            let saturated = if exponent.starts_with('-') { -(1 << 40) } else { 1 << 40 };
            (mantissa, exponent.parse::<i64>().unwrap_or(saturated))
        }
        None => (text, 0),
    };
    let negative = mantissa.starts_with('-');
    let unsigned = mantissa.trim_start_matches('-');
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let decimals = (fraction.len() as i64).saturating_sub(exponent).max(0);
    if decimals as u64 > MOST_DECIMALS {
        return Err(CustomFieldsError::TooPrecise);
    }
    let digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).collect();
    // The decimal point stands before `digits[point]`, which may lie outside `digits`.
    let point = (whole.len() as i64).saturating_add(exponent);
    let zero = digits.iter().all(|digit| *digit == b'0');
    // Zero has no integer digit but the one printed for it, however far its exponent shifts it.
    let leading_zeros = if zero { i64::MAX } else { digits.iter().take_while(|digit| **digit == b'0').count() as i64 };
    let integer_digits = point.saturating_sub(leading_zeros).max(0);
    if integer_digits > MOST_INTEGER_DIGITS {
        return Err(CustomFieldsError::OutOfRange);
    }
    let digit_at =
        |position: i64| usize::try_from(position).ok().and_then(|at| digits.get(at)).map_or('0', |d| *d as char);
    let mut printed = String::new();
    if negative && !zero {
        printed.push('-');
    }
    if integer_digits == 0 {
        printed.push('0');
    }
    printed.extend((point - integer_digits..point).map(digit_at));
    if decimals > 0 {
        printed.push('.');
        printed.extend((point..point + decimals).map(digit_at));
    }
    Ok(printed)
}

/// Most digits of a number's integer part: [`NUMBER_LIMIT`] has 301.
const MOST_INTEGER_DIGITS: i64 = 301;

/// `value` with every number written as Postgres prints it once stored (see `stored_number`), so
/// that a change can be compared with what is stored: `1.50e1` sent over a stored `15.0` changes
/// nothing. A number that cannot be stored stays as sent (checking refuses it).
pub fn as_stored(value: Value) -> Value {
    match value {
        Value::Number(number) => {
            let printed = stored_number(&number.to_string()).ok().and_then(|printed| printed.parse().ok());
            Value::Number(printed.unwrap_or(number))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(as_stored).collect()),
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(name, value)| (name, as_stored(value))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Number;

    fn number(text: &str) -> Number {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn stored_lengths_are_those_postgres_prints() {
        // As `SELECT '[…]'::jsonb::text` prints them on Postgres 15.
        for (sent, printed) in [
            ("15", "15"),
            ("1.50e1", "15.0"),
            ("1e-3", "0.001"),
            ("12.5e-1", "1.25"),
            ("1E+2", "100"),
            ("-2.5", "-2.5"),
        ] {
            assert_eq!(stored_len(&number(sent).to_string()), Ok(printed.len() as u64), "{sent}");
        }
        assert_eq!(stored_len(&number("1e300").to_string()), Ok(301));
        assert_eq!(stored_len(&number("1e-300").to_string()), Ok(302));
    }

    #[test]
    fn numbers_are_written_as_postgres_prints_them_once_stored() {
        // As `SELECT '{…}'::jsonb::text` prints them on Postgres 15.
        for (sent, printed) in [
            ("15", "15"),
            ("1.50e1", "15.0"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("1e-5", "0.00001"),
            ("1E+2", "100"),
            ("0.00", "0.00"),
            ("-1.5e-3", "-0.0015"),
            ("120e-1", "12.0"),
            ("1e0", "1"),
            ("1.0e1", "10"),
            ("5e-1", "0.5"),
            ("0e5", "0"),
            ("0e99999999", "0"),
            ("-0e-2", "0.00"),
            ("10.50", "10.50"),
            ("0.0012e3", "1.2"),
        ] {
            assert_eq!(stored_number(&number(sent).to_string()).as_deref(), Ok(printed), "{sent}");
        }
        let sent: Value = serde_json::from_str(r#"{"a": [1.50e1, {"b": -0}], "c": "1e1"}"#).unwrap();
        assert_eq!(as_stored(sent).to_string(), r#"{"a":[15.0,{"b":0}],"c":"1e1"}"#);
    }

    #[test]
    fn numbers_that_would_swell_or_not_read_back_are_refused() {
        let fields = |value: Value| BTreeMap::from([("k".to_owned(), value)]);
        let underflow: Value = serde_json::from_str("[1e-16383]").unwrap();
        assert_eq!(check(&fields(underflow)), Err(CustomFieldsError::TooPrecise));
        let huge_exponent: Value = serde_json::from_str("[1e-99999999999999999999999]").unwrap();
        assert_eq!(check(&fields(huge_exponent)), Err(CustomFieldsError::TooPrecise));
        let too_big: Value = serde_json::from_str("[1e301]").unwrap();
        assert_eq!(check(&fields(too_big)), Err(CustomFieldsError::OutOfRange));
        let many: Value = serde_json::from_str(&format!("[{}]", vec!["1e300"; 300].join(","))).unwrap();
        assert!(matches!(check(&fields(many)), Err(CustomFieldsError::TooLargeStored(_))), "300 × 301 digits");
        let fine: Value = serde_json::from_str(r#"[1.5e12, -3, {"nested": 2.5, "small": 1e-300}, "text"]"#).unwrap();
        assert_eq!(check(&fields(fine)), Ok(()));
    }
}
