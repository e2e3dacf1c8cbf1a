//! The committed OpenAPI document must match the code.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = openrisk_api::app::openapi_json();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is out of date with the code; regenerate it with\n\n    \
         cargo run -p openrisk-api -- openapi > openapi/openapi.json\n"
    );
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
