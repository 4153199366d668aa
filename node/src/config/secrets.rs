//! Secrets that must never guard a real deployment: placeholders copied from
//! the example files, and the public development internal secret once the
//! operator has configured real secrets elsewhere.

use super::{invalid, Config, ConfigError, DEV_API_KEY, DEV_SECRET};

/// Marks of a value copied from an example instead of generated
/// (deploy/k8s, deploy/duplex.example.toml and the docs use them).
const PLACEHOLDER_MARKS: [&str; 5] = ["replace-me", "replace-with", "change-me", "changeme", "example-"];

fn is_placeholder(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    PLACEHOLDER_MARKS.iter().any(|m| lower.contains(m))
}

/// Refuses any configured secret that is still an example's placeholder.
pub(super) fn refuse_placeholders(cfg: &Config) -> Result<(), ConfigError> {
    let mut secrets: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &cfg.auth.secret {
        secrets.push(("auth.secret", s));
    }
    if let Some(s) = &cfg.admin.token {
        secrets.push(("admin.token", s));
    }
    if let Some(s) = &cfg.admin.read_token {
        secrets.push(("admin.read_token", s));
    }
    if let Some(s) = &cfg.registry.internal_secret {
        secrets.push(("registry.internal_secret", s));
    }
    for k in &cfg.downstream.api_keys {
        secrets.push(("downstream.api_keys", k));
    }
    if let Some(w) = &cfg.events.webhook {
        secrets.push(("events.webhook.secret", &w.secret));
    }
    match secrets.iter().find(|(_, s)| is_placeholder(s)) {
        Some((field, _)) => Err(invalid(
            field,
            "is still the example's placeholder: generate one (e.g. `openssl rand -hex 32`)",
        )),
        None => Ok(()),
    }
}

/// Whether the operator configured any real secret (not a built-in
/// development one): then the public development internal secret must not
/// open the internal listener.
pub(super) fn has_real_secret(cfg: &Config) -> bool {
    cfg.auth.secret.as_deref().is_some_and(|s| s != DEV_SECRET)
        || cfg.auth.public_key.is_some()
        || cfg.auth.public_key_file.is_some()
        || cfg.admin.token.is_some()
        || cfg.downstream.api_keys.iter().any(|k| k != DEV_API_KEY)
}

/// A random internal secret for a node that needs no peers to know it.
pub(super) fn random_internal_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_in_deploy_is_recognised() {
        for s in [
            "replace-with-at-least-32-random-bytes-please",
            "replace-me-with-a-shared-internal-secret",
            "example-admin-token-change-me",
            "REPLACE-ME-PLEASE-0123456789",
        ] {
            assert!(is_placeholder(s), "{s}");
        }
        assert!(!is_placeholder("9f2c4d1be0a3477c8a51d2f0c1e4b7aa"));
    }

    #[test]
    fn the_development_internal_secret_goes_once_a_real_secret_is_set() {
        let mut dev = Config::default();
        dev.validate().expect("valid");
        assert_eq!(dev.registry.secret(), super::super::DEV_INTERNAL_SECRET);

        let mut real = Config::default();
        real.auth.secret = Some("9f2c4d1be0a3477c8a51d2f0c1e4b7aa9f2c4d1b".into());
        real.validate().expect("valid");
        assert_ne!(real.registry.secret(), super::super::DEV_INTERNAL_SECRET);
        assert!(real.registry.internal_secret_generated);

        let mut set = real.clone();
        set.registry.internal_secret = Some("0b9e8d7c6a5f4e3d2c1b0a99".into());
        set.registry.internal_secret_generated = false;
        set.validate().expect("valid");
        assert_eq!(set.registry.secret(), "0b9e8d7c6a5f4e3d2c1b0a99");

        let mut placeholder = Config::default();
        placeholder.admin.token = Some("replace-me-with-a-long-random-admin-token".into());
        let err = placeholder.validate().expect_err("refused").to_string();
        assert!(err.contains("admin.token") && err.contains("placeholder"), "{err}");
    }
}
