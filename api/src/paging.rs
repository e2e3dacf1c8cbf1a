//! Which page of a list a request asks for: its number and its size, each a whole number whose
//! bounds and default live here alone. The spec, the list handlers, the hit path (which reads a
//! list query before the router does) and the database's `LIMIT … OFFSET` all take them from here.

use std::fmt;

use poem_openapi::registry::MetaSchema;
use poem_openapi::types::{ParseError, ParseFromParameter, ParseResult, Type};

use crate::value_type::value_type;

/// A query parameter's whole number from `MIN` to `MAX`, `DEFAULT` when the query leaves it out.
/// Built only by parsing (or as the default), so a number out of bounds never reaches a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bounded<const MIN: u32, const MAX: u32, const DEFAULT: u32>(u32);

/// Which page of a list, from 1.
pub type PageNumber = Bounded<1, 100_000, 1>;

/// How many rows a page of a list holds.
pub type PageSize = Bounded<1, 200, 20>;

impl<const MIN: u32, const MAX: u32, const DEFAULT: u32> Bounded<MIN, MAX, DEFAULT> {
    /// `number`, when it is within the bounds.
    pub fn parse(number: u32) -> Option<Self> {
        (MIN..=MAX).contains(&number).then_some(Self(number))
    }

    /// The number, as the page's body and the cache key's parameters show it.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl PageNumber {
    /// How many rows come before this page when pages hold `size` rows.
    pub fn offset(self, size: PageSize) -> u64 {
        u64::from(self.0 - 1) * u64::from(size.0)
    }
}

impl<const MIN: u32, const MAX: u32, const DEFAULT: u32> Default for Bounded<MIN, MAX, DEFAULT> {
    fn default() -> Self {
        Self(DEFAULT)
    }
}

impl<const MIN: u32, const MAX: u32, const DEFAULT: u32> fmt::Display for Bounded<MIN, MAX, DEFAULT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// To the spec, an optional `uint32` query parameter with its default and bounds.
impl<const MIN: u32, const MAX: u32, const DEFAULT: u32> Type for Bounded<MIN, MAX, DEFAULT> {
    value_type! {
        required: false,
        name: format!("integer_uint32_{MIN}_to_{MAX}"),
        schema: MetaSchema {
            default: Some(DEFAULT.into()),
            minimum: Some(MIN.into()),
            maximum: Some(MAX.into()),
            ..MetaSchema::new_with_format("integer", "uint32")
        },
    }
}

impl<const MIN: u32, const MAX: u32, const DEFAULT: u32> ParseFromParameter for Bounded<MIN, MAX, DEFAULT> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        value
            .parse()
            .ok()
            .and_then(Self::parse)
            .ok_or_else(|| ParseError::custom(format!("`{value}` is not a whole number from {MIN} to {MAX}")))
    }

    /// The first value given, or the default when the query gives none.
    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(values: I) -> ParseResult<Self> {
        match values.into_iter().next() {
            Some(value) => Self::parse_from_parameter(value.as_ref()),
            None => Ok(Self::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_number_is_read_only_within_its_bounds() {
        assert_eq!(PageNumber::parse_from_parameter("1").ok(), PageNumber::parse(1));
        assert_eq!(PageNumber::parse_from_parameter("100000").map(PageNumber::get).ok(), Some(100_000));
        for refused in ["0", "100001", "-1", "ten", "", "1.5"] {
            let error = PageNumber::parse_from_parameter(refused).unwrap_err();
            assert!(error.message().contains("from 1 to 100000"), "{refused}: {}", error.message());
        }
    }

    #[test]
    fn a_page_size_left_out_is_the_default_of_twenty() {
        assert_eq!(PageSize::parse_from_parameters(Vec::<&str>::new()).map(PageSize::get).ok(), Some(20));
        assert_eq!(PageSize::parse_from_parameters(["50", "7"]).map(PageSize::get).ok(), Some(50));
        assert!(PageSize::parse_from_parameter("201").is_err());
    }

    #[test]
    fn a_page_starts_after_the_rows_of_the_pages_before_it() {
        let size = PageSize::parse(50).unwrap();
        assert_eq!(PageNumber::default().offset(size), 0);
        assert_eq!(PageNumber::parse(100_000).unwrap().offset(size), 4_999_950);
    }
}
