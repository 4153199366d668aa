//! The files in deploy/ cannot rot: every `DUPLEX_*` variable they set is a
//! real configuration key, every flag they pass is one the binary takes, the
//! ports HAProxy and Kubernetes use are the ports the nodes listen on, and the
//! compose node configuration loads with the compose environment.

use std::collections::BTreeSet;
use std::process::Command;

use duplex_node::config::{Config, TlsConfig};

const FILES: [(&str, &str); 7] = [
    ("docker-compose.yml", include_str!("../deploy/docker-compose.yml")),
    ("compose-duplex.toml", include_str!("../deploy/compose-duplex.toml")),
    ("haproxy.cfg", include_str!("../deploy/haproxy.cfg")),
    ("k8s/duplex.yaml", include_str!("../deploy/k8s/duplex.yaml")),
    (
        "systemd/duplex.service",
        include_str!("../deploy/systemd/duplex.service"),
    ),
    ("Dockerfile", include_str!("../deploy/Dockerfile")),
    (
        "systemd/duplex@.service",
        include_str!("../deploy/systemd/duplex@.service"),
    ),
];

/// The tier commands deploy files start (`duplex access` ...).
const TIERS: [&str; 3] = ["access", "upstream", "downstream"];

fn config_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                out.insert(format!("{prefix}{k}"));
                walk(&format!("{prefix}{k}."), v, out);
            }
        }
    }
    let mut keys = BTreeSet::new();
    // Optional tables are unset by default: set them so their keys count too.
    let mut config = Config::default();
    config.access.tls = Some(TlsConfig {
        cert_file: "cert.pem".into(),
        key_file: "key.pem".into(),
        client_ca_file: None,
    });
    walk("", &serde_json::to_value(config).expect("config"), &mut keys);
    keys
}

/// `DUPLEX_A__B_C` names in `text`.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("DUPLEX_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

#[test]
fn every_variable_is_a_configuration_key() {
    let keys = config_keys();
    for (file, text) in FILES {
        for name in env_names(text) {
            let key = name
                .trim_start_matches("DUPLEX_")
                .to_ascii_lowercase()
                .replace("__", ".");
            assert!(
                keys.contains(&key) || key == "config" || key == "token",
                "deploy/{file} sets {name}, but there is no configuration key {key}"
            );
        }
    }
}

#[test]
fn every_flag_is_one_the_binary_takes() {
    let help = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut checked = 0;
    let mut tiers_templated = false;
    for (file, text) in FILES {
        // Command lines of duplex containers (other images' commands are theirs).
        let duplex_lines = text.lines().filter(|l| {
            let l = l.trim_start();
            let starts = |p: &str| {
                l.strip_prefix(p).is_some_and(|rest| {
                    rest.starts_with("\"--") || TIERS.iter().any(|t| rest.starts_with(&format!("\"{t}\"")))
                })
            };
            starts("command: [") || starts("args: [") || l.starts_with("ExecStart=/usr/local/bin/duplex")
        });
        for line in duplex_lines {
            for tier in TIERS.iter().filter(|t| line.contains(&format!("\"{t}\""))) {
                assert!(
                    help.contains(&format!("\n  {tier} ")),
                    "deploy/{file} runs `duplex {tier}`, unknown to `duplex --help`"
                );
                checked += 1;
            }
            if line.contains("duplex %i") {
                tiers_templated = true;
            }
            for (i, _) in line.match_indices("--") {
                let flag: String = line[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                assert!(
                    help.contains(&flag),
                    "deploy/{file} passes {flag}, unknown to `duplex --help`"
                );
                checked += 1;
            }
        }
    }
    for tier in TIERS {
        assert!(help.contains(&format!("\n  {tier} ")), "`duplex {tier}` exists");
    }
    assert!(tiers_templated, "the systemd template unit runs `duplex %i`");
    assert!(checked >= 3, "the duplex command lines were found");
    assert!(FILES[4].1.contains("ExecStart=/usr/local/bin/duplex --config"));
}

#[test]
fn proxies_and_probes_use_the_ports_the_nodes_listen_on() {
    let compose = FILES[0].1;
    for port in [
        "0.0.0.0:7070",
        "0.0.0.0:7071",
        "0.0.0.0:7080",
        "0.0.0.0:7090",
        "0.0.0.0:7095",
    ] {
        assert!(compose.contains(port), "compose nodes listen on {port}");
        assert!(FILES[3].1.contains(port), "k8s nodes listen on {port}");
    }
    let haproxy = FILES[2].1;
    for line in haproxy.lines().filter(|l| l.trim_start().starts_with("server ")) {
        assert!(
            [":7070 ", ":7071 ", ":7443 ", ":7444 "]
                .iter()
                .any(|p| line.contains(p)),
            "{line}"
        );
        assert!(line.contains("check port 7090"), "health from the admin port: {line}");
    }
    assert!(haproxy.contains("GET /readyz"));
    assert!(FILES[3].1.contains("path: /readyz, port: 7090"));
}

#[test]
fn the_compose_node_configuration_loads_with_its_environment() {
    let compose = FILES[0].1;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duplex"));
    cmd.args([
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose-duplex.toml"),
    ]);
    // The shared environment block of the compose nodes, as the container gets it.
    for line in compose.lines() {
        let line = line.trim();
        if let Some((k, v)) = line.split_once(": ") {
            if k.starts_with("DUPLEX_") && k != "DUPLEX_REDIS_URL" {
                // Secrets come from the operator's environment: give real ones.
                let v = match v.strip_prefix("${") {
                    Some(_) if k.ends_with("API_KEYS") => "[\"6f0e1d2c3b4a59687786950a\"]".to_owned(),
                    Some(_) => format!("{:x}{:x}", rand::random::<u128>(), rand::random::<u128>()),
                    None => v.trim_matches('\'').to_owned(),
                };
                cmd.env(k, v);
            }
        }
    }
    let out = cmd.args(["token", "--sub", "someone"]).output().expect("run duplex");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kubernetes_pods_get_no_service_link_variables() {
    let k8s = FILES[3].1;
    let pods = k8s.matches("containers:").count();
    assert!(pods >= 3, "access, upstream and downstream");
    assert_eq!(
        k8s.matches("enableServiceLinks: false").count(),
        pods,
        "every pod template"
    );
}

#[test]
fn the_placeholder_secrets_in_deploy_are_refused_at_start() {
    let k8s = FILES[3].1;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duplex"));
    let mut set = 0;
    for line in k8s.lines() {
        if let Some((k, v)) = line.trim().split_once(": ") {
            if k.starts_with("DUPLEX_") && (k.contains("SECRET") || k.ends_with("TOKEN") || k.ends_with("API_KEYS")) {
                cmd.env(k, v.trim_matches(['"', '\'']));
                set += 1;
            }
        }
    }
    assert!(set >= 4, "the k8s Secret sets the four secrets");
    let out = cmd.args(["token", "--sub", "someone"]).output().expect("run duplex");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("placeholder"), "{err}");
    // Compose has no placeholder to fall back on: every secret is `${NAME:?...}`.
    for name in [
        "DUPLEX_AUTH__SECRET",
        "DUPLEX_ADMIN__TOKEN",
        "DUPLEX_REGISTRY__INTERNAL_SECRET",
        "DUPLEX_DOWNSTREAM__API_KEYS",
    ] {
        assert!(FILES[0].1.contains(&format!("{name}: ${{{name}:?")), "{name}");
    }
}
