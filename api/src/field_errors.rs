//! Names the field behind a request body that does not fit its type. poem-openapi reports a
//! missing, `null` or wrongly typed value with the type's name and the value only (`Expected
//! input type "integer_int16", found "3". (occurred while parsing "RiskCreate")`); this finds the
//! field in the body that holds that value, by the generated document's schema of the type, so
//! the client is told which one to fix. A message that names a field already is left alone.

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
/// which field that is; otherwise `error` itself. The route the router matched stays with it.
pub fn name_the_field(error: poem::Error, body: &[u8]) -> poem::Error {
    if !error.is::<ParseRequestPayloadError>() {
        return error;
    }
    let Some(named) = with_field_named(&error.to_string(), body) else { return error };
    let mut named = poem::Error::from_string(named, StatusCode::BAD_REQUEST);
    if let Some(pattern) = error.data::<poem::PathPattern>() {
        named.set_data(pattern.clone());
    }
    named
}

/// `message` (a body's parse error) with the field it is about named in front of it, when the
/// body shows which field of the outermost type the message names holds the value it reports.
pub fn with_field_named(message: &str, body: &[u8]) -> Option<String> {
    if ["field `", "unknown field", "is read only"].iter().any(|named| message.contains(named)) {
        return None;
    }
    let (reported, type_name) = message.split_once(" (occurred while parsing \"")?;
    let type_name = type_name.rsplit("(occurred while parsing \"").next()?.split('"').next()?;
    let body: Value = serde_json::from_slice(body).ok()?;
    let (field, misfit) = misfit_reported(SCHEMAS.get(type_name)?, body.as_object()?, reported)?;
    Some(format!("field `{field}` {misfit} ({message})"))
}

/// The field of `object` (of the type `schema` describes) that `reported` is about, with what is
/// wrong with it: a required one missing or `null` when nothing or `null` was found, otherwise
/// the one holding the value found, where it does not fit.
fn misfit_reported(schema: &Value, object: &Map<String, Value>, reported: &str) -> Option<(String, String)> {
    let found = match reported.split_once(", found ") {
        Some((_, found)) => Some(serde_json::from_str::<Value>(found.strip_suffix('.')?).ok()?),
        None if reported.ends_with("expects an input value.") => Some(Value::Null),
        None => None,
    };
    if found == Some(Value::Null) {
        let required = schema["required"].as_array()?.iter().filter_map(Value::as_str);
        let missing = required.into_iter().find(|name| object.get(*name).is_none_or(Value::is_null))?;
        let misfit = if object.contains_key(missing) { "must not be null" } else { "is required" };
        return Some((missing.to_owned(), misfit.to_owned()));
    }
    schema["properties"].as_object()?.iter().find_map(|(name, property)| {
        let value = object.get(name)?;
        if found.as_ref().is_some_and(|found| found != value) {
            return None;
        }
        misfit(resolved(property), value).map(|misfit| (name.clone(), misfit))
    })
}

/// What is wrong with `value` as a value of `property` (a resolved schema): another JSON type,
/// or a value its `enum` does not list.
fn misfit(property: &Value, value: &Value) -> Option<String> {
    let expected = property["type"].as_str()?;
    let found = json_type(value);
    if found != expected && !(expected == "number" && found == "integer") {
        return Some(format!("must be {} {expected}, not {} {found}", article(expected), article(found)));
    }
    let allowed = property["enum"].as_array()?;
    (!allowed.contains(value)).then(|| {
        let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        format!("must be one of {}", allowed.join(", "))
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

    /// What poem-openapi reports for a value of `RiskCreate` it could not read.
    fn reported(found: &str) -> String {
        format!("Expected input type \"integer_int16\", found {found}. (occurred while parsing \"RiskCreate\")")
    }

    fn named(found: &str, body: &str) -> Option<String> {
        with_field_named(&reported(found), body.as_bytes())
            .map(|named| named.strip_suffix(&format!(" ({})", reported(found))).unwrap().to_owned())
    }

    #[test]
    fn the_field_named_is_the_one_holding_the_value_reported_or_the_first_required_one_missing() {
        let named = |found, body| named(found, body).unwrap_or_default();
        assert_eq!(named("null", r#"{"title": "t", "impact": 3}"#), "field `probability` is required");
        assert_eq!(
            named("null", r#"{"title": null, "impact": 3, "probability": 4}"#),
            "field `title` must not be null"
        );
        assert_eq!(
            named("\"3\"", r#"{"title": "t", "impact": "3", "probability": 4}"#),
            "field `impact` must be an integer, not a string"
        );
        // Two misfits: the one whose value is reported, whatever the order of the fields.
        let two = r#"{"title": 5, "impact": "x", "probability": 4}"#;
        assert_eq!(named("5", two), "field `title` must be a string, not an integer");
        assert_eq!(named("\"x\"", two), "field `impact` must be an integer, not a string");
        // `null` for a field that may be left out is not what was reported.
        let with_null_owner = r#"{"title": "t", "impact": 3, "probability": 4, "owner": null, "status": "BOGUS"}"#;
        assert!(named("\"BOGUS\"", with_null_owner).starts_with("field `status` must be one of \""));
    }

    #[test]
    fn nothing_is_named_where_the_body_or_the_message_cannot_say_which_field() {
        let fits = r#"{"title": "t", "impact": 3, "probability": 4}"#;
        assert_eq!(named("\"3\"", fits), None, "no field holds the value reported");
        assert_eq!(named("\"3\"", "[1]"), None, "not an object");
        assert_eq!(
            with_field_named("Expected input type \"object\", found array.", fits.as_bytes()),
            None,
            "no type named"
        );
        let validated = "field `title` verification failed. maxLength(255) (occurred while parsing \"RiskCreate\")";
        assert_eq!(with_field_named(validated, r#"{"title": 5}"#.as_bytes()), None, "a field is named already");
    }
}
