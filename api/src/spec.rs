//! The OpenAPI document as published (`openrisk-api openapi`, `/openapi.json`, `/docs`): what
//! poem-openapi derives, plus four adjustments its attributes cannot express. Without them client
//! generators drop operations and models, and linters report errors; `docs/clients.md` names the
//! generators and `openapi/clients.sh` checks them against the result.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// A JSON value whose objects keep their key order. `serde_json::Value` sorts keys (the crate's
/// `preserve_order` feature is off in this workspace), which would reorder every path, property
/// and field of the document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
enum Json {
    Object(IndexMap<String, Json>),
    Array(Vec<Json>),
    Scalar(serde_json::Value),
}

/// The key under which serde_json hands a number to a visitor when it keeps numbers exactly
/// (its `arbitrary_precision` feature, on in this workspace): a one-entry map to the number's text.
const EXACT_NUMBER_KEY: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Scalar(value.into()))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json, E> {
        Ok(Json::Scalar(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json, E> {
        Ok(Json::Scalar(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json, E> {
        Ok(Json::Scalar(value.into()))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::Scalar(value.into()))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Scalar(serde_json::Value::Null))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Json, A::Error> {
        let mut array = Vec::new();
        while let Some(item) = items.next_element()? {
            array.push(item);
        }
        Ok(Json::Array(array))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut fields: A) -> Result<Json, A::Error> {
        let mut object = IndexMap::new();
        while let Some(key) = fields.next_key::<String>()? {
            if object.is_empty() && key == EXACT_NUMBER_KEY {
                let text: String = fields.next_value()?;
                return text.parse().map(Json::Scalar).map_err(serde::de::Error::custom);
            }
            object.insert(key, fields.next_value()?);
        }
        Ok(Json::Object(object))
    }
}

impl Json {
    fn as_object(&self) -> Option<&IndexMap<String, Json>> {
        match self {
            Json::Object(map) => Some(map),
            _ => None,
        }
    }

    fn as_object_mut(&mut self) -> Option<&mut IndexMap<String, Json>> {
        match self {
            Json::Object(map) => Some(map),
            _ => None,
        }
    }
}

/// The published document, pretty-printed, from the one poem-openapi derived
/// (`OpenApiService::spec`).
pub fn publish(derived: &str) -> String {
    let mut document: Json = serde_json::from_str(derived).expect("poem-openapi emits valid JSON");
    unwrap_annotated_references(&mut document);
    mark_public_operations(&mut document);
    close_request_bodies(&mut document);
    spell_response_headers(&mut document);
    serde_json::to_string_pretty(&document).expect("a JSON tree always serialises")
}

/// poem-openapi gives a referenced schema a description or a default (a field's doc comment, a
/// parameter's `default`) by wrapping the reference as
/// `{"description": D, "allOf": [{"$ref": R}, {"description": D}]}`. Generators that merge the
/// members of `allOf` as objects refuse that when `R` is an enum (openapi-python-client: "Cannot take
/// allOf a non-object") and then drop the schema and every operation that uses it. The second
/// member only repeats what the wrapper already says, so it goes: `{"description": D, "allOf":
/// [{"$ref": R}]}` is the usual OpenAPI 3.0 way to annotate a reference (3.0 ignores keywords
/// beside a bare `$ref`), and every generator reads it as `R`. An `allOf` whose members add
/// anything stays as it is.
fn unwrap_annotated_references(value: &mut Json) {
    match value {
        Json::Object(map) => {
            let redundant = match map.get("allOf") {
                Some(Json::Array(members)) => only_repeats_its_wrapper(map, members),
                _ => false,
            };
            if redundant && let Some(Json::Array(members)) = map.get_mut("allOf") {
                members.truncate(1);
            }
            map.values_mut().for_each(unwrap_annotated_references);
        }
        Json::Array(items) => items.iter_mut().for_each(unwrap_annotated_references),
        Json::Scalar(_) => {}
    }
}

/// Whether `members` is a bare reference followed by keywords that `wrapper` carries already.
fn only_repeats_its_wrapper(wrapper: &IndexMap<String, Json>, members: &[Json]) -> bool {
    let [reference, annotations] = members else {
        return false;
    };
    let bare_reference = reference.as_object().is_some_and(|fields| fields.len() == 1 && fields.contains_key("$ref"));
    let repeated = annotations.as_object().is_some_and(|fields| {
        !fields.contains_key("$ref") && fields.iter().all(|(keyword, value)| wrapper.get(keyword) == Some(value))
    });
    bare_reference && repeated
}

/// The HTTP methods an OpenAPI path item can hold operations under.
const OPERATION_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Every operation object of the document (an entry under an HTTP method of a path item).
fn operations_mut(document: &mut Json) -> impl Iterator<Item = &mut IndexMap<String, Json>> {
    let paths = document.as_object_mut().and_then(|root| root.get_mut("paths")).and_then(Json::as_object_mut);
    paths
        .into_iter()
        .flat_map(|paths| paths.values_mut().filter_map(Json::as_object_mut))
        .flat_map(|item| item.iter_mut().filter(|(method, _)| OPERATION_METHODS.contains(&method.as_str())))
        .filter_map(|(_, operation)| operation.as_object_mut())
}

/// Operations that take no token (liveness, readiness, metrics) come out of poem-openapi without a
/// `security` field, which linters report as an operation whose security was forgotten. An empty
/// list says what is meant: no authentication.
fn mark_public_operations(document: &mut Json) {
    for operation in operations_mut(document) {
        operation.entry("security".to_owned()).or_insert_with(|| Json::Array(Vec::new()));
    }
}

/// Header names as RFC 9110 and its kin spell them, where poem-openapi upper-cases them (it does
/// for headers declared on an error or a `201`; those declared on a success keep their spelling).
const HEADER_SPELLINGS: [&str; 5] = ["ETag", "Location", "WWW-Authenticate", "Cache-Status", "Retry-After"];

/// Gives each response header its usual spelling, so the document names one header one way
/// (generated TypeScript types would otherwise carry both `ETAG` and `ETag`).
fn spell_response_headers(document: &mut Json) {
    for operation in operations_mut(document) {
        let Some(Json::Object(responses)) = operation.get_mut("responses") else { continue };
        for response in responses.values_mut().filter_map(Json::as_object_mut) {
            let Some(Json::Object(headers)) = response.get_mut("headers") else { continue };
            *headers = std::mem::take(headers)
                .into_iter()
                .map(|(name, header)| {
                    let spelled = HEADER_SPELLINGS.iter().find(|spelling| spelling.eq_ignore_ascii_case(&name));
                    (spelled.map_or(name, |spelling| (*spelling).to_owned()), header)
                })
                .collect();
        }
    }
}

/// Where the component schemas are referenced from.
const SCHEMA_PREFIX: &str = "#/components/schemas/";

/// Every request body of this API is an object that refuses fields it does not declare
/// (`#[oai(deny_unknown_fields)]`: a misspelt field is a 400, never silently ignored), but
/// poem-openapi leaves that out of the schema, so clients and fuzzers take any extra field for
/// valid. Each schema a request body names gets `additionalProperties: false`;
/// `api/tests/openapi.rs` checks that every one of them really refuses an undeclared field.
fn close_request_bodies(document: &mut Json) {
    let mut named = Vec::new();
    for operation in operations_mut(document) {
        let Some(Json::Object(body)) = operation.get("requestBody") else { continue };
        let Some(Json::Object(content)) = body.get("content") else { continue };
        for media in content.values().filter_map(Json::as_object) {
            if let Some(Json::Object(schema)) = media.get("schema")
                && let Some(Json::Scalar(serde_json::Value::String(reference))) = schema.get("$ref")
                && let Some(name) = reference.strip_prefix(SCHEMA_PREFIX)
            {
                named.push(name.to_owned());
            }
        }
    }
    let Json::Object(root) = document else { return };
    let Some(Json::Object(components)) = root.get_mut("components") else { return };
    let Some(Json::Object(schemas)) = components.get_mut("schemas") else { return };
    for name in named {
        if let Some(Json::Object(schema)) = schemas.get_mut(&name) {
            schema.insert("additionalProperties".to_owned(), Json::Scalar(serde_json::Value::Bool(false)));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::publish;

    fn published(derived: Value) -> Value {
        serde_json::from_str(&publish(&derived.to_string())).unwrap()
    }

    #[test]
    fn response_headers_are_spelled_one_way_whatever_poem_openapi_made_of_them() {
        let headers = json!({"ETAG": {}, "LOCATION": {}, "WWW-AUTHENTICATE": {}, "Cache-Status": {}, "RETRY-AFTER": {}, "X-Other": {}});
        let document = published(json!({"paths": {"/r": {"get": {"responses": {"200": {"headers": headers}}}}}}));
        let spelled: Vec<&String> =
            document["paths"]["/r"]["get"]["responses"]["200"]["headers"].as_object().unwrap().keys().collect();
        assert_eq!(spelled, ["Cache-Status", "ETag", "Location", "Retry-After", "WWW-Authenticate", "X-Other"]);
    }

    #[test]
    fn an_annotated_reference_keeps_its_annotations_and_only_the_reference_in_all_of() {
        let property = json!({
            "description": "Defaults to DRAFT.",
            "allOf": [{"$ref": "#/components/schemas/RiskStatus"}, {"description": "Defaults to DRAFT."}],
        });
        let parameter = json!({
            "default": "desc",
            "allOf": [{"$ref": "#/components/schemas/SortDirection"}, {"default": "desc"}],
        });
        let document = published(
            json!({"components": {"schemas": {"RiskCreate": {"properties": {"status": property}}}},
                                         "paths": {"/r": {"get": {"security": [], "parameters": [{"schema": parameter}]}}}}),
        );
        assert_eq!(
            document["components"]["schemas"]["RiskCreate"]["properties"]["status"],
            json!({"description": "Defaults to DRAFT.", "allOf": [{"$ref": "#/components/schemas/RiskStatus"}]})
        );
        assert_eq!(
            document["paths"]["/r"]["get"]["parameters"][0]["schema"],
            json!({"default": "desc", "allOf": [{"$ref": "#/components/schemas/SortDirection"}]})
        );
    }

    #[test]
    fn an_all_of_that_adds_anything_stays_whole() {
        let compositions = [
            // The second member says more than the wrapper.
            json!({"description": "D", "allOf": [{"$ref": "#/a"}, {"description": "D", "minLength": 1}]}),
            // The second member says something else than the wrapper.
            json!({"description": "D", "allOf": [{"$ref": "#/a"}, {"description": "E"}]}),
            // Two references.
            json!({"allOf": [{"$ref": "#/a"}, {"$ref": "#/b"}]}),
            // The first member is not a bare reference.
            json!({"description": "D", "allOf": [{"$ref": "#/a", "nullable": true}, {"description": "D"}]}),
        ];
        for schema in compositions {
            let document = published(json!({"components": {"schemas": {"S": schema.clone()}}}));
            assert_eq!(document["components"]["schemas"]["S"], schema);
        }
    }

    #[test]
    fn operations_without_security_are_marked_public_and_the_others_keep_theirs() {
        let bearer = json!([{"BearerAuth": []}]);
        let document = published(json!({"paths": {
            "/healthz": {"get": {"summary": "Liveness"}},
            "/risks": {"get": {"security": bearer.clone()}, "post": {}, "parameters": [{"name": "x"}]},
        }}));
        assert_eq!(document["paths"]["/healthz"]["get"], json!({"summary": "Liveness", "security": []}));
        assert_eq!(document["paths"]["/risks"]["get"]["security"], bearer);
        assert_eq!(document["paths"]["/risks"]["post"]["security"], json!([]));
        assert_eq!(document["paths"]["/risks"]["parameters"], json!([{"name": "x"}]), "not an operation");
    }

    #[test]
    fn schemas_of_request_bodies_refuse_undeclared_fields_and_the_others_stay_open() {
        let body = |name: &str| json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}});
        let document = published(json!({
            "paths": {"/risks": {"post": {"requestBody": body("RiskCreate")}, "get": {}},
                      "/risks/{id}": {"patch": {"requestBody": body("RiskPatch")}}},
            "components": {"schemas": {"RiskCreate": {"type": "object"}, "RiskPatch": {"type": "object"},
                                       "Risk": {"type": "object"}}},
        }));
        let schemas = &document["components"]["schemas"];
        assert_eq!(schemas["RiskCreate"], json!({"type": "object", "additionalProperties": false}));
        assert_eq!(schemas["RiskPatch"], json!({"type": "object", "additionalProperties": false}));
        assert_eq!(schemas["Risk"], json!({"type": "object"}), "a response body stays open");
    }

    #[test]
    fn keys_and_numbers_come_out_as_poem_openapi_wrote_them() {
        let derived = "{\n  \"openapi\": \"3.0.0\",\n  \"paths\": {\n    \"/z\": {\n      \"get\": {\n        \
                       \"security\": [],\n        \"x\": {\n          \"maximum\": 5.0,\n          \"minimum\": 1,\n          \
                       \"default\": null\n        }\n      }\n    },\n    \"/a\": {}\n  }\n}";
        assert_eq!(publish(derived), derived);
    }
}
