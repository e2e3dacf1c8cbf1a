//! Names the field behind a request body that does not fit its type. poem-openapi reports a
//! missing, `null` or wrongly typed value with the type's name only (`expected type "integer",
//! found string (occurred while parsing "RiskCreate")`); this finds the field in the body by the
//! published document's schema of that type, so the client is told which one to fix.

use std::sync::LazyLock;

use poem::http::StatusCode;
use poem_openapi::error::ParseRequestPayloadError;
use serde_json::{Map, Value};

/// The document's schemas, by name (`components.schemas`).
static SCHEMAS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    let document: Value = serde_json::from_str(&crate::app::api_service().spec()).unwrap_or_default();
    document["components"]["schemas"].as_object().cloned().unwrap_or_default()
});

/// `error` with the field it is about named, when it is a body's parse error and `body` shows
/// which field that is; otherwise `error` itself.
pub fn name_the_field(error: poem::Error, body: &[u8]) -> poem::Error {
    if !error.is::<ParseRequestPayloadError>() {
        return error;
    }
    match with_field_named(&error.to_string(), body) {
        Some(named) => poem::Error::from_string(named, StatusCode::BAD_REQUEST),
        None => error,
    }
}

/// `message` (a body's parse error) with the field it is about named in front of it, when `body`
/// shows which field of the outermost type the message names does not fit; `None` otherwise.
pub fn with_field_named(message: &str, body: &[u8]) -> Option<String> {
    let type_name = message.rsplit("(occurred while parsing \"").next()?.split('"').next()?;
    let body: Value = serde_json::from_slice(body).ok()?;
    let (field, misfit) = first_misfit(SCHEMAS.get(type_name)?, body.as_object()?)?;
    Some(format!("field `{field}` {misfit} ({message})"))
}

/// The first field of `object` that `schema` (an object's) says is missing, `null` or of
/// another JSON type, with what is wrong with it.
fn first_misfit(schema: &Value, object: &Map<String, Value>) -> Option<(String, String)> {
    let required = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str);
    if let Some(missing) = required.into_iter().find(|name| !object.contains_key(*name)) {
        return Some((missing.to_owned(), "is required".to_owned()));
    }
    let properties = schema["properties"].as_object()?;
    properties.iter().find_map(|(name, property)| {
        let value = object.get(name)?;
        let property = resolved(property);
        let nullable = property["nullable"].as_bool().unwrap_or(false);
        if value.is_null() {
            return (!nullable).then(|| (name.clone(), "must not be null".to_owned()));
        }
        let expected = property["type"].as_str()?;
        let found = json_type(value);
        let fits = found == expected || (expected == "number" && found == "integer");
        if !fits {
            return Some((
                name.clone(),
                format!("must be {} {expected}, not {} {found}", article(expected), article(found)),
            ));
        }
        let allowed = property["enum"].as_array()?;
        (!allowed.contains(value)).then(|| {
            let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
            (name.clone(), format!("must be one of {}", allowed.join(", ")))
        })
    })
}

/// The schema a property stands for: itself, or the one it names (`$ref`, alone or as the only
/// member of `allOf`, which is how a reference carries a description of its own).
fn resolved(property: &Value) -> &Value {
    let reference = property["$ref"].as_str().or_else(|| property["allOf"][0]["$ref"].as_str());
    reference
        .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
        .and_then(|name| SCHEMAS.get(name))
        .unwrap_or(property)
}

/// The document's name for the JSON type of `value`.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// "a" or "an", for a type name.
fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_a_null_a_mistyped_and_an_unknown_value_are_named_by_their_field() {
        let parsing = "expected type \"integer\", found string (occurred while parsing \"RiskCreate\")";
        let named = |body: &str| with_field_named(parsing, body.as_bytes());
        let whole = r#"{"title": "t", "impact": 3, "probability": 4}"#;
        assert_eq!(
            named(r#"{"title": "t", "impact": 3}"#).unwrap(),
            format!("field `probability` is required ({parsing})")
        );
        assert!(
            named(r#"{"title": "t", "impact": "3", "probability": 4}"#)
                .unwrap()
                .starts_with("field `impact` must be an integer, not a string (")
        );
        assert!(
            named(r#"{"title": null, "impact": 3, "probability": 4}"#)
                .unwrap()
                .starts_with("field `title` must not be null (")
        );
        assert!(
            named(r#"{"title": "t", "impact": 3, "probability": 4, "status": "BOGUS"}"#)
                .unwrap()
                .starts_with("field `status` must be one of \"")
        );
        assert_eq!(named(whole), None, "a body that fits names nothing");
        assert_eq!(named("[1]"), None);
        assert_eq!(with_field_named("expected type \"object\", found array", whole.as_bytes()), None, "no type named");
    }
}
