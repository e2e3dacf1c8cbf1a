//! The string fields of request bodies.

use std::borrow::Cow;

use poem_openapi::registry::MetaSchemaRef;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// A string field of a request body: a JSON string and nothing else. poem-openapi's `String`
/// also takes a JSON number or boolean and keeps its text (`"title": 123` stored "123"); the
/// document says `string`, so anything else is a 400 naming the type, as for every other field.
/// Documented exactly as `String`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(pub String);

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.0
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;

    /// Validators (`min_length`, `pattern`, …) check the string itself.
    type RawValueType = String;

    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a text holding the NUL character is refused (the field it is in is named from this).
pub const NUL_IN_TEXT: &str = "must not contain the NUL character (U+0000)";

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            // Postgres stores no NUL: refused here, where the error can name the field.
            Value::String(text) if text.contains('\0') => Err(ParseError::custom(NUL_IN_TEXT)),
            Value::String(text) => Ok(Self(text)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_string_is_text() {
        assert_eq!(Text::parse_from_json(Some(Value::from("x"))).unwrap(), Text("x".into()));
        for other in [Value::from(123), Value::from(true), Value::Null, serde_json::json!(["x"])] {
            assert!(Text::parse_from_json(Some(other.clone())).is_err(), "{other} is no text");
        }
        assert!(String::parse_from_json(Some(Value::from(123))).is_ok(), "poem-openapi's String takes a number");
    }

    #[test]
    fn text_with_a_nul_character_is_refused() {
        let refused = Text::parse_from_json(Some(Value::from("a\0b"))).unwrap_err();
        assert!(refused.message().contains("NUL"), "{}", refused.message());
        assert!(Text::parse_from_json(Some(Value::from("a\u{1}b"))).is_ok(), "other control characters are text");
    }
}
