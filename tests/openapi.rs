//! The push API's OpenAPI document, as the binary serves it: every endpoint
//! of docs/API.md is in it with its method, and every example there (request
//! bodies of the curl commands, answers in the JSON blocks) validates against
//! the document's schemas.

mod common;

use common::process::*;
use serde_json::Value;

/// A section of docs/API.md headed ``## `METHOD /path` ``: its method, path and text.
fn sections(doc: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for part in doc.split("\n## `").skip(1) {
        let Some((title, body)) = part.split_once('\n') else {
            continue;
        };
        let Some((method, rest)) = title.split_once(' ') else {
            continue;
        };
        let Some((path, _)) = rest.split_once('`') else {
            continue;
        };
        let body = body.split("\n## ").next().unwrap_or("");
        out.push((method.to_lowercase(), path.to_owned(), body.to_owned()));
    }
    out
}

/// Code blocks of `lang` in `text`.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    text.split(&fence)
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(code, _)| code))
        .collect()
}

/// Validates `instance` against the schema at `pointer` inside the document.
fn validate(document: &Value, pointer: &str, instance: &Value, what: &str) {
    let mut root = document.clone();
    root["$ref"] = Value::String(format!("#{pointer}"));
    let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{what}: schema {pointer}: {e}"));
    let errors: Vec<String> = validator.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what} does not match {pointer}: {errors:?}\n{instance}"
    );
}

/// `/a/b/{c}` as a JSON pointer token (`~1` for `/`) inside a URI fragment (braces escaped).
fn token(path: &str) -> String {
    path.replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

#[tokio::test]
async fn every_documented_endpoint_and_example_is_in_the_served_openapi_document() {
    let run = start(&[]);
    let response = reqwest::get(format!("http://{}/openapi.json", run.push))
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("json");
    assert!(
        document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "{}",
        document["openapi"]
    );

    let api = include_str!("../docs/API.md");
    let sections = sections(api);
    assert!(sections.len() >= 6, "{sections:?}");
    let mut examples = 0;
    for (method, path, text) in &sections {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not in /openapi.json");
        // Request bodies: the JSON after `-d '` in the curl examples.
        for sh in blocks(text, "sh") {
            let Some(body) = sh.split("-d '").nth(1).and_then(|b| b.split('\'').next()) else {
                continue;
            };
            let body: Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path} example body: {e}"));
            let pointer = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no request body schema"))
                .trim_start_matches('#')
                .to_owned();
            validate(&document, &pointer, &body, &format!("{method} {path} request example"));
            examples += 1;
        }
        // Answers: each JSON block against the success answer's schema.
        for json in blocks(text, "json") {
            let answer: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{method} {path} example: {e}"));
            let success = ["200", "202"]
                .into_iter()
                .find(|s| operation["responses"][s].is_object())
                .unwrap_or_else(|| panic!("{method} {path} has no success answer"));
            let pointer = format!(
                "/paths/{}/{method}/responses/{success}/content/application~1json/schema",
                token(path)
            );
            validate(&document, &pointer, &answer, &format!("{method} {path} answer example"));
            examples += 1;
        }
    }
    assert!(examples >= 7, "only {examples} examples checked");
    // And the check bites: a seq that is a string is no push answer.
    let mut root = document.clone();
    root["$ref"] = Value::String("#/components/schemas/PushResponse".into());
    let validator = jsonschema::validator_for(&root).expect("schema");
    let wrong = serde_json::json!({"messages": [{"client_id": "a", "seq": "7", "state": "queued"}]});
    assert!(!validator.is_valid(&wrong));

    // The document is public (like the docs); the API itself is not.
    let refused = reqwest::get(format!("http://{}/v1/messages/x", run.push))
        .await
        .expect("get");
    assert_eq!(refused.status(), 401);
}

#[tokio::test]
async fn every_admin_call_of_operations_md_is_in_the_admin_openapi_document() {
    const TOKEN: &str = "admin-token-for-the-openapi-test";
    let config = config_file(&format!("[admin]\ntoken = \"{TOKEN}\"\n"));
    let run = start(&["--config", &config.path]);
    let url = format!("http://{}/openapi.json", run.admin);
    let anonymous = reqwest::get(&url).await.expect("get");
    assert_eq!(anonymous.status(), 401, "behind the admin token like the API");
    let document: Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")));

    let operations = include_str!("../docs/OPERATIONS.md");
    let table = operations.split("## Admin API").nth(1).expect("admin section");
    let mut calls = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let call = row.trim_start_matches("| `").split('`').next().unwrap_or("");
        let Some((method, path)) = call.split_once(' ') else {
            continue;
        };
        let path = path.split('?').next().unwrap_or(path);
        let method = method.to_lowercase();
        assert!(
            document["paths"][path][&method].is_object(),
            "{method} {path} is not in the admin /openapi.json"
        );
        calls += 1;
        // The routing row's example body is a service as the API takes it.
        if method == "put" {
            let example = row
                .split("(`")
                .nth(1)
                .and_then(|r| r.split("`;").next())
                .expect("PUT example");
            let body: Value = serde_json::from_str(example).expect("example JSON");
            validate(
                &document,
                "/components/schemas/ServiceConfig",
                &body,
                "PUT service example",
            );
        }
    }
    assert!(calls >= 10, "only {calls} admin calls found");
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert!(document["paths"][path]["get"].is_object(), "{path}");
    }
}
