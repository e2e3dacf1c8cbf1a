//! Names the field behind a request body that does not fit its type. poem-openapi reports a
//! missing, `null` or wrongly typed value with the type's name and the value only (`Expected
//! input type "integer_int16", found "3". (occurred while parsing "RiskCreate")`); this finds the
//! field in the body that holds that value, by the generated document's schema of the type, so
//! the client is told which one to fix. A message that names a field already is left alone.

use poem::http::StatusCode;
use poem_openapi::error::ParseRequestPayloadError;
use serde_json::{Map, Value};

use crate::model::{NUL_IN_TEXT, NULL_CANNOT_CLEAR};

/// The document's schema named `name` (in `components.schemas`).
fn schema(name: &str) -> Option<&'static Value> {
    crate::app::spec_document()["components"]["schemas"].get(name)
}

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
/// Only a value of one of that type's own fields qualifies (poem names each type the error
/// passed through, and an optional field's wrapper is the only one allowed between them, or a
/// list for a NUL in one of its texts), and only one field may hold it: otherwise the message is
/// left as it is.
pub fn with_field_named(message: &str, body: &[u8]) -> Option<String> {
    if ["field `", "unknown field", "is read only"].iter().any(|named| message.contains(named)) {
        return None;
    }
    // Quotes inside a reported value are escaped, so this splits only where poem added a type.
    let mut parts = message.split(" (occurred while parsing \"");
    let reported = parts.next()?;
    let types: Vec<&str> = parts.map(|part| part.split('"').next().unwrap_or_default()).collect();
    let (type_name, between) = types.split_last()?;
    // A NUL is reported from inside a list of texts too; no other value of a list names a field.
    let in_a_list = |name: &&str| name.starts_with("list_") && reported.contains(NUL_IN_TEXT);
    if !between.iter().all(|name| name.starts_with("optional_") || in_a_list(name)) {
        return None;
    }
    let body: Value = serde_json::from_slice(body).ok()?;
    let (field, misfit) = misfit_reported(schema(type_name)?, body.as_object()?, reported)?;
    Some(format!("field `{field}` {misfit} ({message})"))
}

/// The field of `object` (of the type `schema` describes) that `reported` is about, with what is
/// wrong with it: the first required one missing or `null` (in the order the type declares them,
/// as poem reads them) when nothing or `null` was found, the only one holding the value found
/// where it does not fit, or, for the two errors poem reports without the value (a patch's `null`,
/// an integer it could not read into its format), the only field that can have caused it.
fn misfit_reported(schema: &Value, object: &Map<String, Value>, reported: &str) -> Option<(String, String)> {
    let found = match reported.split_once(", found ") {
        Some((_, found)) => serde_json::from_str::<Value>(found.strip_suffix('.')?).ok()?,
        None if reported.ends_with("expects an input value.") => Value::Null,
        None if reported.contains(NUL_IN_TEXT) => {
            let holds_nul = |_: &Value, value: &Value| holds_nul(value).then(|| NUL_IN_TEXT.to_owned());
            return only_misfit(schema, object, holds_nul);
        }
        None if reported.contains(NULL_CANNOT_CLEAR) => {
            let refuses_null = |property: &Value, value: &Value| {
                (value.is_null() && property["nullable"] != true).then(|| "must not be null".to_owned())
            };
            return only_misfit(schema, object, refuses_null);
        }
        None => {
            // `failed to parse "integer_int16": invalid integer` or `…: Only integers from …`.
            let format = reported.split('"').nth(1)?.trim_start_matches("optional_").strip_prefix("integer_")?;
            let unread_integer = |property: &Value, value: &Value| {
                (property["type"] == "integer" && property["format"] == format && !value.is_null())
                    .then(|| misfit(property, value))
                    .flatten()
            };
            return only_misfit(schema, object, unread_integer);
        }
    };
    if found.is_null() {
        let required = schema["required"].as_array()?.iter().filter_map(Value::as_str);
        let missing = required.into_iter().find(|name| object.get(*name).is_none_or(Value::is_null))?;
        let misfit = if object.contains_key(missing) { "must not be null" } else { "is required" };
        return Some((missing.to_owned(), misfit.to_owned()));
    }
    only_misfit(schema, object, |property, value| (*value == found).then(|| misfit(property, value)).flatten())
}

/// Whether `value` is a text holding the NUL character, or a list holding one.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        _ => false,
    }
}

/// The only field of `object` for which `misfit` (given its resolved property and its value)
/// says what is wrong; none when no field or several do.
fn only_misfit(
    schema: &Value,
    object: &Map<String, Value>,
    misfit: impl Fn(&Value, &Value) -> Option<String>,
) -> Option<(String, String)> {
    let mut misfits = schema["properties"].as_object()?.iter().filter_map(|(name, property)| {
        misfit(resolved(property), object.get(name)?).map(|misfit| (name.clone(), misfit))
    });
    let only = misfits.next()?;
    misfits.next().is_none().then_some(only)
}

/// What is wrong with `value` as a value of `property` (a resolved schema): another JSON type, an
/// integer outside its format's range, or a value its `enum` does not list.
fn misfit(property: &Value, value: &Value) -> Option<String> {
    let expected = property["type"].as_str()?;
    let found = json_type(value);
    if found != expected && !(expected == "number" && found == "integer") {
        return Some(format!("must be {} {expected}, not {} {found}", article(expected), article(found)));
    }
    if let Some((least, most)) = property["format"].as_str().and_then(integer_range)
        && !value.to_string().parse::<i128>().is_ok_and(|integer| (least..=most).contains(&integer))
    {
        // The document's own bounds where it gives them: those are what the client must meet.
        let bound = |key: &str, format_bound: i128| property[key].as_f64().map_or(format_bound, |bound| bound as i128);
        return Some(format!("must be an integer from {} to {}", bound("minimum", least), bound("maximum", most)));
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
    reference.and_then(|reference| reference.strip_prefix("#/components/schemas/")).and_then(schema).unwrap_or(property)
}

/// The values an integer of `format` (`int16`, `uint32`, …) can hold.
fn integer_range(format: &str) -> Option<(i128, i128)> {
    let (signed, bits) = match format.split_at_checked(format.find(|c: char| c.is_ascii_digit())?)? {
        ("int", bits) => (true, bits.parse::<u32>().ok()?),
        ("uint", bits) => (false, bits.parse::<u32>().ok()?),
        _ => return None,
    };
    if !(8..=64).contains(&bits) {
        return None;
    }
    Some(if signed { (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) } else { (0, (1 << bits) - 1) })
}

/// The document's name for the JSON type of `value`.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        // As written: numbers keep their text here (`arbitrary_precision`), however large.
        Value::Number(number) if !number.to_string().contains(['.', 'e', 'E']) => "integer",
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
        assert_eq!(
            named("1e400", r#"{"title": "t", "impact": 1e400, "probability": 4}"#),
            "field `impact` must be an integer, not a number"
        );
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
        let two_alike = r#"{"title": 5, "owner": 5, "impact": 3, "probability": 4}"#;
        assert_eq!(named("5", two_alike), None, "two fields hold the value: poem's order is not the document's");
        let in_a_list = "Expected input type \"string\", found 5. (occurred while parsing \"list_string\") \
                         (occurred while parsing \"RiskCreate\")";
        let tags_and_owner = r#"{"title": "t", "impact": 3, "probability": 4, "tags": [5], "owner": 5}"#;
        assert_eq!(with_field_named(in_a_list, tags_and_owner.as_bytes()), None, "a value inside a list");
        let no_value = "failed to parse \"integer_int16\": invalid integer (occurred while parsing \"RiskCreate\")";
        let two_misfits = r#"{"title": "t", "impact": 2.5, "probability": 4.5}"#;
        assert_eq!(with_field_named(no_value, two_misfits.as_bytes()), None, "no value reported, two misfits");
    }

    #[test]
    fn without_a_value_reported_the_only_field_that_can_have_caused_it_is_named() {
        let named = |message: &str, body: &str| {
            with_field_named(message, body.as_bytes()).map(|named| named.split(" (").next().unwrap().to_owned())
        };
        let invalid = "failed to parse \"integer_int16\": invalid integer (occurred while parsing \"optional_integer_int16\") \
                       (occurred while parsing \"RiskPatch\")";
        let integer = Some("field `impact` must be an integer, not a number");
        assert_eq!(named(invalid, r#"{"impact": 2.5}"#).as_deref(), integer);
        assert_eq!(named(invalid, r#"{"impact": 2.5, "title": 7}"#).as_deref(), integer, "only an int16 can fail so");
        assert_eq!(named(invalid, r#"{"impact": 2.5, "probability": 1.5}"#), None, "two int16s could have");
        assert_eq!(named(invalid, r#"{"impact": 3, "owner": null}"#), None, "nothing misfits");
        let too_large = "failed to parse \"integer_int16\": Only integers from -32768 to 32767 are accepted. \
                         (occurred while parsing \"RiskCreate\")";
        let body = r#"{"title": "t", "impact": 70000, "probability": 4, "owner": null}"#;
        assert_eq!(named(too_large, body).as_deref(), Some("field `impact` must be an integer from 1 to 5"));
        let beyond_every_integer =
            r#"{"title": "t", "impact": 1000000000000000000000000000000000000000, "probability": 2}"#;
        assert_eq!(
            named(invalid, beyond_every_integer).as_deref(),
            Some("field `impact` must be an integer from 1 to 5")
        );
        let cleared = format!(
            "failed to parse \"optional_string\": {NULL_CANNOT_CLEAR} (occurred while parsing \"MitigationPatch\")"
        );
        let nullable_too = r#"{"due_date": null, "title": null, "cost": "x"}"#;
        assert_eq!(named(&cleared, nullable_too).as_deref(), Some("field `title` must not be null"));
        assert_eq!(named(&cleared, r#"{"title": null, "assignee": null}"#), None, "two fields refuse null");
        // A date poem could not read is reported without its value but with a type of its own.
        let bad_date =
            "failed to parse \"string_date\": `2027-02-30` is not a date (occurred while parsing \"MitigationCreate\")";
        let later_misfit = r#"{"title": "t", "due_date": "2027-02-30", "mitigation_time_days": "10"}"#;
        assert_eq!(named(bad_date, later_misfit), None, "not the later field that does not fit");
    }

    #[test]
    fn a_text_holding_a_nul_is_named_alone_or_in_a_list() {
        let named = |message: &str, body: &str| {
            with_field_named(message, body.as_bytes()).map(|named| named.split(" (").next().unwrap().to_owned())
        };
        let nul = format!("failed to parse \"string\": {NUL_IN_TEXT} (occurred while parsing \"RiskCreate\")");
        let body = r#"{"title": "a\u0000b", "owner": "fine", "impact": 1}"#;
        assert_eq!(named(&nul, body).as_deref(), Some("field `title` must not contain the NUL character"));
        let in_a_list = format!(
            "failed to parse \"string\": {NUL_IN_TEXT} (occurred while parsing \"list_string\") (occurred while parsing \"RiskCreate\")"
        );
        let body = r#"{"title": "ok", "tags": ["x", "a\u0000b"]}"#;
        assert_eq!(named(&in_a_list, body).as_deref(), Some("field `tags` must not contain the NUL character"));
        assert_eq!(named(&nul, r#"{"title": "a\u0000", "owner": "b\u0000"}"#), None, "two fields hold one");
    }

    #[test]
    fn an_integer_format_holds_its_range() {
        assert_eq!(integer_range("int16"), Some((-32768, 32767)));
        assert_eq!(integer_range("uint32"), Some((0, 4_294_967_295)));
        assert_eq!(integer_range("int64"), Some((i128::from(i64::MIN), i128::from(i64::MAX))));
        for other in ["double", "date", "int", "int128", "uuid"] {
            assert_eq!(integer_range(other), None, "{other}");
        }
    }
}
