//! One optional field of a PATCH body. Absent leaves the field as it is; a value sets it; `null`
//! is refused (400) where the field cannot be empty, instead of reading as absent as `Option`
//! would: a client that sends `"owner": null` to clear the owner learns that it cannot, rather
//! than getting a 200 and the old owner. Fields that can be cleared use `MaybeUndefined`.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// A field a PATCH may set or leave out, but not set to `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change<T>(pub Option<T>);

impl<T> Change<T> {
    pub fn as_ref(&self) -> Option<&T> {
        self.0.as_ref()
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Option<U> {
        self.0.map(f)
    }
}

impl<T> From<Change<T>> for Option<T> {
    fn from(change: Change<T>) -> Self {
        change.0
    }
}

impl<T: Type> Type for Change<T> {
    const IS_REQUIRED: bool = false;

    type RawValueType = T::RawValueType;

    type RawElementValueType = T::RawElementValueType;

    /// As `Option`'s: error details name the documented type (see `error::documented_names`).
    fn name() -> Cow<'static, str> {
        format!("optional_{}", T::name()).into()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(Type::as_raw_value)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(value) => value.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }

    fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

/// Why a change refuses `null` (a field only a value can change).
pub const NULL_CANNOT_CLEAR: &str = "null cannot clear this field; leave it out to keep it";

impl<T: ParseFromJSON> ParseFromJSON for Change<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            None => Ok(Self(None)),
            Some(Value::Null) => Err(ParseError::custom(NULL_CANNOT_CLEAR)),
            value => T::parse_from_json(value).map(|value| Self(Some(value))).map_err(ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Change<T> {
    fn to_json(&self) -> Option<Value> {
        self.0.as_ref().and_then(ToJSON::to_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_keeps_a_value_sets_and_null_is_refused() {
        assert_eq!(Change::<String>::parse_from_json(None).unwrap(), Change(None));
        assert_eq!(Change::<i16>::parse_from_json(Some(Value::from(3))).unwrap(), Change(Some(3)));
        let refused = Change::<String>::parse_from_json(Some(Value::Null)).unwrap_err();
        assert!(refused.message().contains("null cannot clear this field"), "{}", refused.message());
        assert!(Change::<i16>::parse_from_json(Some(Value::from("three"))).is_err());
    }
}
