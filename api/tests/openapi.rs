//! The committed OpenAPI document must match the code (a mismatch prints the unified diff).

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = openrisk_api::app::openapi_json();
    let (committed, generated) = (format!("{}\n", committed.trim_end()), format!("{}\n", generated.trim_end()));
    if committed != generated {
        let diff = similar::TextDiff::from_lines(&committed, &generated);
        panic!(
            "openapi/openapi.json is out of date with the code; regenerate it with\n\n    \
             cargo run -p openrisk-api -- openapi > openapi/openapi.json\n\n{}",
            diff.unified_diff().context_radius(3).header("openapi/openapi.json (committed)", "generated from the code")
        );
    }
}

#[test]
fn every_operation_is_described_and_errors_are_problem_json() {
    let spec: serde_json::Value = serde_json::from_str(&openrisk_api::app::openapi_json()).unwrap();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            assert!(operation["summary"].is_string(), "{method} {path} has no summary");
            assert!(operation["operationId"].is_string(), "{method} {path} has no operation id");
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"].as_str().is_some_and(|text| !text.is_empty()),
                    "{method} {path} {status}"
                );
                if (status.starts_with('4') || status.starts_with('5')) && path.starts_with("/api") {
                    assert!(response["content"]["application/problem+json"].is_object(), "{method} {path} {status}");
                }
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                assert!(parameter["description"].is_string(), "{method} {path}: parameter {name} is undescribed");
            }
        }
    }
}

/// Every object in `value`, depth first, with its JSON pointer.
fn objects<'a>(
    pointer: String,
    value: &'a serde_json::Value,
    found: &mut Vec<(String, &'a serde_json::Map<String, serde_json::Value>)>,
) {
    match value {
        serde_json::Value::Object(map) => {
            found.push((pointer.clone(), map));
            for (key, child) in map {
                objects(format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1")), child, found);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                objects(format!("{pointer}/{index}"), child, found);
            }
        }
        _ => {}
    }
}

#[test]
fn all_of_only_annotates_a_reference_so_generators_keep_every_schema() {
    let spec: serde_json::Value = serde_json::from_str(&openrisk_api::app::openapi_json()).unwrap();
    let mut found = Vec::new();
    objects(String::new(), &spec, &mut found);
    let wrappers: Vec<_> = found.iter().filter(|(_, object)| object.contains_key("allOf")).collect();
    assert!(!wrappers.is_empty(), "the document annotates enum references (sort_by's default, say)");
    for (pointer, object) in wrappers {
        let members = object["allOf"].as_array().unwrap();
        let bare_reference =
            |member: &serde_json::Value| member.as_object().is_some_and(|m| m.len() == 1 && m.contains_key("$ref"));
        assert!(members.len() == 1 && bare_reference(&members[0]), "{pointer}: {members:?}");
    }
}

#[test]
fn every_operation_states_its_security() {
    let spec: serde_json::Value = serde_json::from_str(&openrisk_api::app::openapi_json()).unwrap();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let security = operation["security"].as_array();
            assert!(security.is_some(), "{method} {path} has no security requirement (use [] for public operations)");
            let public = security.is_some_and(|requirements| requirements.is_empty());
            assert_eq!(public, !path.starts_with("/api"), "{method} {path}: only operations outside /api are public");
        }
    }
}

#[test]
fn component_examples_fit_their_schemas() {
    let spec: serde_json::Value = serde_json::from_str(&openrisk_api::app::openapi_json()).unwrap();
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    let with_examples: Vec<_> = schemas.iter().filter(|(_, schema)| schema["example"].is_object()).collect();
    assert!(with_examples.len() >= 3, "Risk, RiskCreate and Problem carry examples");
    for (name, schema) in with_examples {
        let example = schema["example"].as_object().unwrap();
        let properties = schema["properties"].as_object().unwrap();
        for (field, value) in example {
            let property = properties.get(field).unwrap_or_else(|| panic!("{name}.example.{field} is undeclared"));
            assert!(
                !value.is_null() || property["nullable"] == true,
                "{name}.example.{field} is null but the schema does not allow null"
            );
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            assert!(example.contains_key(required.as_str().unwrap()), "{name}.example lacks {required}");
        }
    }
}

#[test]
fn fields_that_accept_null_say_so() {
    let spec: serde_json::Value = serde_json::from_str(&openrisk_api::app::openapi_json()).unwrap();
    let mut nullable = Vec::new();
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        for (field, property) in schema["properties"].as_object().into_iter().flatten() {
            let documents_null = property["description"].as_str().is_some_and(|text| text.contains("`null`"));
            assert_eq!(property["nullable"] == true, documents_null, "{name}.{field}: {property}");
            if documents_null {
                nullable.push(format!("{name}.{field}"));
            }
        }
    }
    assert_eq!(nullable, ["MitigationPatch.due_date", "RiskPatch.external_id"]);
}

#[test]
fn every_schema_and_every_property_is_described_for_the_generated_docs_and_clients() {
    let spec: serde_json::Value = serde_json::from_str(&openrisk_api::app::openapi_json()).unwrap();
    let described = |schema: &serde_json::Value| schema["description"].as_str().is_some_and(|text| !text.is_empty());
    let mut undescribed = Vec::new();
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        if !described(schema) {
            undescribed.push(name.clone());
        }
        for (property, value) in schema["properties"].as_object().into_iter().flatten() {
            // A bare reference shows the description of the schema it names, checked above.
            if !described(value) && !value["$ref"].is_string() {
                undescribed.push(format!("{name}.{property}"));
            }
        }
    }
    assert!(undescribed.is_empty(), "undescribed in the OpenAPI document: {}", undescribed.join(", "));
}

/// Whether `T` takes the body `valid` and refuses it with one undeclared field more.
fn refuses_an_undeclared_field<T: poem_openapi::types::ParseFromJSON>(valid: serde_json::Value) -> bool {
    assert!(T::parse_from_json(Some(valid.clone())).is_ok(), "{} takes {valid}", T::name());
    let mut with_surplus = valid;
    with_surplus["undeclared"] = serde_json::json!(1);
    T::parse_from_json(Some(with_surplus)).is_err()
}

#[test]
fn every_schema_the_document_closes_to_undeclared_fields_refuses_them() {
    use openrisk_api::model::*;
    use serde_json::json;
    let spec: serde_json::Value = serde_json::from_str(&openrisk_api::app::openapi_json()).unwrap();
    let closed: std::collections::BTreeSet<&str> = spec["components"]["schemas"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, schema)| schema["additionalProperties"] == false)
        .map(|(name, _)| name.as_str())
        .collect();
    let checked = [
        (
            "AssetCreate",
            refuses_an_undeclared_field::<AssetCreate>(json!({"name": "a", "asset_type": "x", "criticality": "HIGH"})),
        ),
        ("AssetPatch", refuses_an_undeclared_field::<AssetPatch>(json!({}))),
        ("MitigationCreate", refuses_an_undeclared_field::<MitigationCreate>(json!({"title": "m"}))),
        ("MitigationPatch", refuses_an_undeclared_field::<MitigationPatch>(json!({}))),
        ("RiskCreate", refuses_an_undeclared_field::<RiskCreate>(json!({"title": "r", "impact": 1, "probability": 1}))),
        ("RiskPatch", refuses_an_undeclared_field::<RiskPatch>(json!({}))),
        ("SubActionCreate", refuses_an_undeclared_field::<SubActionCreate>(json!({"title": "s"}))),
        ("SubActionPatch", refuses_an_undeclared_field::<SubActionPatch>(json!({}))),
        ("TokenCreate", refuses_an_undeclared_field::<TokenCreate>(json!({"role": "viewer"}))),
    ];
    let names = checked.iter().map(|(name, _)| *name).collect();
    assert_eq!(closed, names, "every request body's schema is closed, and checked here");
    for (name, refuses) in checked {
        assert!(refuses, "{name}'s schema says undeclared fields are refused, but the API takes one");
    }
}
