//! Which `DUPLEX_*` environment variables are configuration. Kubernetes
//! injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_...` for every Service of
//! the namespace, so a Service named `duplex-clients` puts
//! `DUPLEX_CLIENTS_SERVICE_HOST` into every pod: a variable that names no
//! configuration key is ignored with a warning instead of stopping the node.
//! (Unknown keys in a TOML file stay errors: a file is written for Duplex.)

use duplex_node::config::Config;
use serde_json::Value;

/// Variables with the prefix that are not configuration keys.
const NOT_CONFIG: [&str; 2] = ["CONFIG", "TOKEN"];

/// The configuration's key tree, from its defaults.
pub struct Schema(Value);

impl Schema {
    pub fn new(defaults: &Config) -> Self {
        // Should the defaults not serialize, every variable passes on to the configuration's own checks.
        Schema(serde_json::to_value(defaults).unwrap_or(Value::Null))
    }

    /// Whether `key` (`access.heartbeat_ms`, lowercase, `.`-separated) can be a
    /// configuration key. Below a map (an object without default entries, like
    /// `upstream.services`) or an option that is unset by default, any key may
    /// be; the configuration's own checks judge it there.
    pub fn knows(&self, key: &str) -> bool {
        let mut at = &self.0;
        for segment in key.split('.') {
            match at {
                Value::Object(fields) if fields.is_empty() => return true,
                Value::Object(fields) => match fields.get(segment) {
                    Some(next) => at = next,
                    None => return false,
                },
                Value::Null => return true,
                _ => return false,
            }
        }
        true
    }

    /// The `DUPLEX_*` variables of `vars` that name no configuration key, sorted.
    pub fn unknown_variables(&self, vars: impl Iterator<Item = String>) -> Vec<String> {
        let mut unknown: Vec<String> = vars
            .filter_map(|name| {
                let rest = name.strip_prefix("DUPLEX_")?;
                let key = rest.to_ascii_lowercase().replace("__", ".");
                (!NOT_CONFIG.contains(&rest) && !self.knows(&key)).then_some(name)
            })
            .collect();
        unknown.sort();
        unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_service_variables_are_not_configuration_and_real_keys_are() {
        let schema = Schema::new(&Config::default());
        for key in [
            "redis_url",
            "access.heartbeat_ms",
            "auth.secret",
            "access.tls.cert_file",
        ] {
            assert!(schema.knows(key), "{key}");
        }
        assert!(schema.knows("upstream.services.orders.endpoints"), "below a map");
        for key in [
            "clients_service_host",
            "clients_port_7070_tcp_addr",
            "access.heartbeat_mss",
            "access.heartbeat_ms.x",
        ] {
            assert!(!schema.knows(key), "{key}");
        }
        let vars = [
            "DUPLEX_CLIENTS_SERVICE_HOST",
            "DUPLEX_ACCESS__HEARTBEAT_MS",
            "DUPLEX_CONFIG",
            "DUPLEX_CLIENTS_PORT",
            "PATH",
        ];
        assert_eq!(
            schema.unknown_variables(vars.iter().map(|v| (*v).to_owned())),
            vec!["DUPLEX_CLIENTS_PORT", "DUPLEX_CLIENTS_SERVICE_HOST"]
        );
    }
}
