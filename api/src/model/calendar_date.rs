//! Calendar dates in bodies (`due_date`, a trend's `day`): RFC 3339 full dates (`2027-03-31`),
//! published with OpenAPI's standard `date` format so that generated clients and request
//! fuzzers read them as dates, not as free text.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use poem_openapi::registry::MetaSchema;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

use crate::value_type::value_type;

/// A day from 0001-01-01 to 9999-12-31, written `YYYY-MM-DD`: what Postgres stores and every
/// client can print. Built from a request only through [`CalendarDate::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CalendarDate(NaiveDate);

/// Text that is not a `YYYY-MM-DD` date of a year from 1 to 9999.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a date from 0001-01-01 to 9999-12-31 written YYYY-MM-DD")]
pub struct NotACalendarDate(String);

impl CalendarDate {
    /// Reads exactly four digits of year, two of month and two of day, naming a real day from
    /// year 1 on (chrono alone would also take signs, longer years and year 0).
    pub fn parse(text: &str) -> Result<Self, NotACalendarDate> {
        let shaped = text.len() == 10
            && text.bytes().enumerate().all(|(at, b)| if at == 4 || at == 7 { b == b'-' } else { b.is_ascii_digit() });
        shaped
            .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
            .flatten()
            .filter(|date| date.year() >= 1)
            .map(Self)
            .ok_or_else(|| NotACalendarDate(text.to_owned()))
    }
}

/// A date read back from the database, as stored (only SQL written around the API can store
/// one outside the years this type parses).
impl From<NaiveDate> for CalendarDate {
    fn from(date: NaiveDate) -> Self {
        Self(date)
    }
}

impl From<CalendarDate> for NaiveDate {
    fn from(date: CalendarDate) -> Self {
        date.0
    }
}

impl fmt::Display for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

impl Type for CalendarDate {
    value_type!(required: true, name: "string_date", schema: MetaSchema::new_with_format("string", "date"));
}

impl ParseFromJSON for CalendarDate {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => Ok(Self::parse(&text)?),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for CalendarDate {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::CalendarDate;

    #[test]
    fn full_dates_of_years_one_to_9999_parse_and_print_as_written() {
        for text in ["0001-01-01", "2027-03-31", "2024-02-29", "9999-12-31"] {
            assert_eq!(CalendarDate::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn anything_but_a_real_yyyy_mm_dd_day_from_year_one_is_refused() {
        for text in [
            "0000-12-31",
            "-0001-01-01",
            "+2027-03-31",
            "10000-01-01",
            "2027-3-31",
            "2027-02-29",
            "2027-13-01",
            "2027-03-31T00:00:00Z",
            " 2027-03-31",
            "tomorrow",
            "",
        ] {
            let refused = CalendarDate::parse(text).unwrap_err();
            assert!(refused.to_string().starts_with(&format!("`{text}` is not a date")), "{refused}");
        }
    }
}
