//! A configuration error names the key that is wrong.

use duplex_node::config::{Config, ConfigError, UpstreamConfig};

fn field_of(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { field, .. } => field,
        other => panic!("expected an invalid field, got {other}"),
    }
}

#[test]
fn each_bad_value_names_its_own_key() {
    let mut config = Config::default();
    config.downstream.queue_max_bytes = 2000;
    assert_eq!(
        field_of(config.validate().expect_err("refused")),
        "downstream.queue_max_bytes"
    );
    let mut config = Config::default();
    config.downstream.queue_max_messages = 0;
    assert_eq!(
        field_of(config.validate().expect_err("refused")),
        "downstream.queue_max_messages"
    );
    for bad in [0, 63, 1024 * 1024 + 1] {
        let mut config = Config::default();
        config.access.ws_read_buffer_bytes = bad;
        assert_eq!(
            field_of(config.validate().expect_err("refused")),
            "access.ws_read_buffer_bytes"
        );
    }
    for (key, tweak) in [
        (
            "upstream.spool_max_bytes",
            (|u: &mut UpstreamConfig| u.spool_max_bytes = 0) as fn(&mut UpstreamConfig),
        ),
        ("upstream.spool_max_items", |u| u.spool_max_items = 0),
        ("upstream.spool_max_user_items", |u| {
            u.spool_max_user_items = u.spool_max_items + 1
        }),
        ("upstream.spool_max_user_bytes", |u| u.spool_max_user_bytes = 0),
    ] {
        let mut upstream = UpstreamConfig::default();
        tweak(&mut upstream);
        assert_eq!(field_of(upstream.validate().expect_err(key)), key);
    }
}
