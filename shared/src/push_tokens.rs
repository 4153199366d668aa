//! The shape of an OS push token, checked before it is stored, whether it
//! comes from a backend (push API) or from the app (`register_push` frame):
//! a hostile or broken token is refused, never stored to fail at the provider.

use base64::Engine;
use duplex_store::PushProvider;

/// Longest token kept (a Web Push subscription is a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The provider, the token in its stored form (a Web Push subscription as
/// compact JSON) and the app; or why the token is refused.
pub fn check_push_token(
    provider: &str,
    token: &str,
    app: Option<&str>,
) -> Result<(PushProvider, String, Option<String>), String> {
    let provider =
        PushProvider::parse(provider).ok_or_else(|| format!("provider {provider:?}: use apns, fcm or webpush"))?;
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(format!("token must be 1..={MAX_TOKEN_BYTES} bytes"));
    }
    let token = match provider {
        // Apple's tokens are hex (32 bytes today; Apple says their length may change).
        PushProvider::Apns if !(16..=400).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Err("an APNs device token is 16..=400 hex digits".into())
        }
        PushProvider::Fcm if !token.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err("an FCM token is printable ASCII without spaces".into())
        }
        PushProvider::Webpush => webpush(token)?,
        _ => token.to_owned(),
    };
    let app = match app {
        Some(app) => {
            let ok =
                (1..=255).contains(&app.len()) && app.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err("app must be 1..=255 of [A-Za-z0-9._-]".into());
            }
            Some(app.to_owned())
        }
        None => None,
    };
    Ok((provider, token, app))
}

/// A Web Push subscription (RFC 8030 endpoint, RFC 8291 keys) as JSON text,
/// written back as compact JSON: `endpoint` an https URL (http only to a
/// loopback address: a local relay, a test's fake), `p256dh` an uncompressed
/// P-256 point (65 bytes), `auth` 16 bytes, both base64url.
fn webpush(text: &str) -> Result<String, String> {
    let subscription: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("token: not a subscription: {e}"))?;
    let endpoint = subscription["endpoint"]
        .as_str()
        .ok_or("a Web Push subscription needs an endpoint")?;
    let (scheme, rest) = endpoint.split_once("://").ok_or("the endpoint must be an https URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let printable = endpoint.bytes().all(|b| b.is_ascii_graphic());
    if host.is_empty() || !printable || !(scheme == "https" || (scheme == "http" && loopback)) {
        return Err("the endpoint must be an https URL (http only to a loopback address)".into());
    }
    let key = |name: &str, len: usize| -> Result<String, String> {
        let text = subscription["keys"][name]
            .as_str()
            .ok_or_else(|| format!("a Web Push subscription needs keys.{name}"))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| format!("keys.{name} is not base64url"))?;
        if bytes.len() != len || (name == "p256dh" && bytes[0] != 4) {
            return Err(format!("keys.{name} must decode to {len} bytes"));
        }
        Ok(text.trim_end_matches('=').to_owned())
    };
    let (p256dh, auth) = (key("p256dh", 65)?, key("auth", 16)?);
    Ok(serde_json::json!({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
    const AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

    #[test]
    fn each_provider_s_tokens_are_checked() {
        let ok = |p: &str, t: &str| check_push_token(p, t, None).map(|(_, t, _)| t);
        assert!(ok("apns", &"a1".repeat(32)).is_ok());
        assert!(ok("apns", "not hex at all, not hex at all").is_err());
        assert!(ok("apns", "ab").is_err());
        assert!(ok("fcm", "dGVzdA:APA91bH-token_123").is_ok());
        assert!(ok("fcm", "with space").is_err());
        assert!(ok("fcm", &"x".repeat(4097)).is_err());
        assert!(ok("fcm", "").is_err());
        assert!(ok("gcm", "x").is_err());
        let sub = |endpoint: &str, p256dh: &str, auth: &str| {
            serde_json::json!({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}).to_string()
        };
        let stored = ok("webpush", &sub("https://push.example.net/abc", P256DH, AUTH)).expect("valid");
        assert_eq!(ok("webpush", &stored).expect("stored form is valid"), stored);
        assert!(ok("webpush", &sub("http://127.0.0.1:9/abc", P256DH, AUTH)).is_ok());
        assert!(ok("webpush", &sub("http://[::1]:9/abc", P256DH, AUTH)).is_ok());
        for broken in [
            sub("http://push.example.net/abc", P256DH, AUTH),
            sub("http://127.0.0.1.example.net/abc", P256DH, AUTH),
            sub("ftp://push.example.net/abc", P256DH, AUTH),
            sub("https:///abc", P256DH, AUTH),
            sub("https://push.example.net/a b", P256DH, AUTH),
            sub("https://push.example.net/abc", AUTH, AUTH),
            sub("https://push.example.net/abc", P256DH, P256DH),
            "{\"keys\": {}}".to_owned(),
            "not json".to_owned(),
        ] {
            assert!(ok("webpush", &broken).is_err(), "{broken}");
        }
        assert!(check_push_token("fcm", "t", Some("com.example.app")).is_ok());
        assert!(check_push_token("fcm", "t", Some("bad app")).is_err());
    }
}
