//! The documented configuration cannot rot: the example file loads, and every
//! key of the real configuration appears in docs/CONFIG.md and in the example.

use duplex_node::config::{Config, EndpointConfig, ServiceConfig};

fn keys(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            match v {
                serde_json::Value::Object(_) => keys(&format!("{prefix}{k}."), v, out),
                // A list of tables (`[[downstream.sources]]`): the list and each table's keys.
                serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
                    out.push(format!("{prefix}{k}"));
                    for item in items {
                        keys(&format!("{prefix}{k}[]."), item, out);
                    }
                }
                _ => out.push(format!("{prefix}{k}")),
            }
        }
    }
}

#[test]
fn every_config_key_is_documented_and_in_the_example() {
    let docs = include_str!("../docs/CONFIG.md");
    let example = include_str!("../deploy/duplex.example.toml");
    let mut all = Vec::new();
    let mut config = Config::default();
    // A service with every field set, so the per-service keys are checked too.
    config.upstream.services.insert(
        "orders".into(),
        ServiceConfig {
            endpoints: vec![EndpointConfig {
                url: "http://127.0.0.1:1".into(),
                weight: 1,
            }],
            health_path: Some("/healthz".into()),
            ..ServiceConfig::default()
        },
    );
    // A source of each kind and a sink, so their keys are checked too.
    let sources: Vec<duplex_brokers::SourceConfig> = serde_json::from_value(serde_json::json!([
        {"kind": "nats", "name": "n", "url": "nats://h", "stream": "S", "subject": "s", "dead_letter_subject": "d"},
        {"kind": "amqp", "name": "a", "url": "amqp://h", "queue": "q", "dead_letter_queue": "d"},
        {"kind": "redis", "name": "r", "url": "redis://h", "stream": "s", "dead_letter_stream": "d"},
    ]))
    .expect("sources");
    config.downstream.sources = sources;
    let sink: duplex_brokers::SinkConfig =
        serde_json::from_value(serde_json::json!({"kind": "redis", "url": "redis://h", "stream": "u"})).expect("sink");
    config.upstream.services.insert(
        "events".into(),
        ServiceConfig {
            sink: Some(sink),
            ..ServiceConfig::default()
        },
    );
    config.events.webhook = Some(duplex_node::config::WebhookConfig {
        url: "https://backend.internal/events".into(),
        secret: "0123456789abcdef0123".into(),
        timeout_ms: 5000,
        max_attempts: 5,
        retry_min_ms: 200,
        retry_max_ms: 10000,
    });
    keys("", &serde_json::to_value(config).expect("serialize"), &mut all);
    assert!(all.len() > 20, "{all:?}");
    for key in &all {
        let leaf = key.rsplit('.').next().expect("leaf");
        assert!(
            docs.contains(&format!("`{leaf}`")),
            "docs/CONFIG.md does not document `{key}`"
        );
        let optional = [
            "auth.public_key",
            "auth.public_key_file",
            "auth.audience",
            "auth.issuer",
        ];
        if !optional.contains(&key.as_str()) {
            assert!(
                example.contains(&format!("{leaf} =")),
                "deploy/duplex.example.toml lacks `{key}`"
            );
        }
    }
}

fn duplex_with_example_config(env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/duplex.example.toml"),
        ])
        .args(["token", "--sub", "someone"])
        .envs(env.iter().copied())
        .output()
        .expect("run duplex")
}

#[test]
fn the_example_config_loads_and_validates_once_its_secrets_are_real() {
    // As the example says: the secrets come from the environment.
    let out = duplex_with_example_config(&[
        ("DUPLEX_AUTH__SECRET", "4f1c9a2be8d047e6b3a5c1d2e9f08a7b6c5d4e3f"),
        ("DUPLEX_REGISTRY__INTERNAL_SECRET", "0b9e8d7c6a5f4e3d2c1b0a99"),
        ("DUPLEX_ADMIN__TOKEN", "7d6c5b4a39281706f5e4d3c2"),
        ("DUPLEX_DOWNSTREAM__API_KEYS", "[\"a1b2c3d4e5f60718293a4b5c\"]"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_example_config_with_its_placeholder_secrets_is_refused() {
    let out = duplex_with_example_config(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("placeholder"), "{err}");
}
