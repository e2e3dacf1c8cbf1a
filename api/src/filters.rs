//! The values a list's query filters by, each parsed against bounds that live here alone. The
//! spec, the list handlers and the hit path (which reads a risk list's query before the router
//! does) all take them from here, so a value one of them accepts the others accept too.

use std::ops::RangeInclusive;

use poem_openapi::registry::MetaSchema;
use poem_openapi::types::{ParseError, ParseFromParameter, ParseResult, Type};

use crate::value_type::value_type;

/// A bound on the risk list's scores (`min_score`, `max_score`): a number from 0 to 1000.
/// Built only by parsing, so NaN, infinities and numbers out of bounds never reach a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreBound(f64);

impl ScoreBound {
    /// The scores a bound may name.
    const RANGE: RangeInclusive<f64> = 0.0..=1000.0;

    /// `number`, when it is within the bounds.
    pub fn parse(number: f64) -> Option<Self> {
        Self::RANGE.contains(&number).then_some(Self(number))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// To the spec, a `double` query parameter with its bounds (named so that the API's errors call
/// it a `number`).
impl Type for ScoreBound {
    value_type! {
        required: true,
        name: "number_double_0_to_1000",
        schema: MetaSchema {
            minimum: Some(*Self::RANGE.start()),
            maximum: Some(*Self::RANGE.end()),
            ..MetaSchema::new_with_format("number", "double")
        },
    }
}

impl ParseFromParameter for ScoreBound {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        let (low, high) = (Self::RANGE.start(), Self::RANGE.end());
        value
            .parse()
            .ok()
            .and_then(Self::parse)
            .ok_or_else(|| ParseError::custom(format!("`{value}` is not a number from {low} to {high}")))
    }
}

/// Text a list filters by, from `MIN` to `MAX` characters (as the spec counts them: Unicode
/// scalar values, not bytes) and without the NUL character, which Postgres cannot compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterText<const MIN: usize, const MAX: usize>(String);

/// Text searched in a list (`q`), at most 200 characters.
pub type SearchText = FilterText<0, 200>;

/// An exact tag (`tag`) or asset type (`asset_type`) to match.
pub type LabelFilter = FilterText<1, 64>;

/// An exact owner (`owner`) to match.
pub type OwnerFilter = FilterText<1, 255>;

impl<const MIN: usize, const MAX: usize> FilterText<MIN, MAX> {
    /// `text`, when it is within the bounds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let characters = text.chars().count();
        if !(MIN..=MAX).contains(&characters) {
            let allowed = if MIN == 0 { format!("at most {MAX}") } else { format!("{MIN} to {MAX}") };
            return Err(format!("{characters} characters, where {allowed} are allowed"));
        }
        if text.contains('\0') {
            return Err("text must not contain the NUL character (U+0000)".to_owned());
        }
        Ok(Self(text.to_owned()))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// To the spec, a string query parameter with its lengths (no `minLength` when it may be empty;
/// named `string`, as the API's errors show it).
impl<const MIN: usize, const MAX: usize> Type for FilterText<MIN, MAX> {
    value_type! {
        required: true,
        name: "string",
        schema: MetaSchema { min_length: (MIN > 0).then_some(MIN), max_length: Some(MAX), ..MetaSchema::new("string") },
    }
}

impl<const MIN: usize, const MAX: usize> ParseFromParameter for FilterText<MIN, MAX> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Self::parse(value).map_err(ParseError::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_bound_is_a_finite_number_from_0_to_1000() {
        for accepted in ["0", "-0", "0.001", "12.5", "1e3", "1000"] {
            assert!(ScoreBound::parse_from_parameter(accepted).is_ok(), "{accepted}");
        }
        for refused in ["-1", "1000.001", "NaN", "inf", "-inf", "x", ""] {
            let error = ScoreBound::parse_from_parameter(refused).unwrap_err();
            assert!(error.message().contains("is not a number from 0 to 1000"), "{refused}: {}", error.message());
        }
        assert_eq!(ScoreBound::parse_from_parameter("12.5").map(ScoreBound::get).ok(), Some(12.5));
    }

    #[test]
    fn filter_text_is_counted_in_characters_not_bytes() {
        let label = "é".repeat(64);
        assert_eq!(LabelFilter::parse(&label).map(LabelFilter::into_string), Ok(label.clone()));
        assert_eq!(LabelFilter::parse(&format!("{label}e")), Err("65 characters, where 1 to 64 are allowed".into()));
        assert_eq!(LabelFilter::parse(""), Err("0 characters, where 1 to 64 are allowed".into()));
        assert!(SearchText::parse("").is_ok());
        assert_eq!(SearchText::parse(&"a".repeat(201)), Err("201 characters, where at most 200 are allowed".into()));
        assert!(OwnerFilter::parse(&"o".repeat(255)).is_ok());
    }

    #[test]
    fn filter_text_with_a_nul_character_is_refused_before_it_reaches_postgres() {
        let error = OwnerFilter::parse_from_parameter("a\0b").unwrap_err();
        assert_eq!(error.message(), "failed to parse \"string\": text must not contain the NUL character (U+0000)");
    }
}
