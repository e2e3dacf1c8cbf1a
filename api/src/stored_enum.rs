//! Enums stored as text in Postgres: one way to write them ([`enum_text`]) and one way to read
//! them back ([`stored`]), which names an unknown value instead of panicking.

/// Text of an enum value as stored in Postgres (its JSON form).
pub fn enum_text<T: poem_openapi::types::ToJSON>(value: &T) -> String {
    match value.to_json() {
        Some(serde_json::Value::String(text)) => text,
        other => other.map(|value| value.to_string()).unwrap_or_default(),
    }
}

/// A value in an enum column that this build does not know (a newer migration or another
/// program wrote it). The read fails with a 500 and a log line naming both; nothing panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column} holds {value:?}, which is none of the values this build knows")]
pub struct UnknownStoredValue {
    pub column: &'static str,
    pub value: String,
}

/// Parses the text of an enum column, the inverse of [`enum_text`]: the one way enums stored
/// as text are read back.
pub fn stored<T: poem_openapi::types::ParseFromJSON>(
    column: &'static str,
    text: &str,
) -> Result<T, UnknownStoredValue> {
    T::parse_from_json(Some(serde_json::Value::String(text.to_owned())))
        .map_err(|_| UnknownStoredValue { column, value: text.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RiskStatus;

    #[test]
    fn an_unknown_stored_enum_value_is_an_error_naming_the_column_and_the_value() {
        assert_eq!(stored::<RiskStatus>("risks.status", "ACTIVE"), Ok(RiskStatus::Active));
        let error = stored::<RiskStatus>("risks.status", "ARCHIVED").unwrap_err();
        assert_eq!(
            error.to_string(),
            "column risks.status holds \"ARCHIVED\", which is none of the values this build knows"
        );
    }
}
