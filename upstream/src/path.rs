//! Client-named paths become backend URLs only through this module. The URL
//! is the configured base with a validated path appended: client text is
//! never joined or resolved as a URL, so it cannot name another host, another
//! scheme, or climb out of the base path.
//!
//! Accepted: printable ASCII starting with one `/`, segments that are not
//! empty and not only dots (also before a `;` path parameter: `..;`, `.;`),
//! percent escapes in the path that do not decode to `.`, `/`, `\`, `%`,
//! `;`, a control byte or a non-ASCII byte (encoded UTF-8, overlong dots),
//! an optional `?query`. Everything else is
//! refused before any request leaves.

use reqwest::Url;

/// Longest client path (with query), bytes.
pub const MAX_PATH_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty or longer than {MAX_PATH_BYTES} bytes")]
    Length,
    #[error("the path must start with a single `/` (no scheme, host or absolute URL)")]
    NotRelative,
    #[error("the path holds a byte outside printable ASCII (CR, LF, space, control, non-ASCII) or a `\\` or `#`")]
    Character,
    #[error("the path holds an empty segment or one of only dots (`.`, `..`, `..;x`)")]
    Traversal,
    #[error("the path holds a malformed or forbidden percent escape (encoded `.`, `/`, `\\`, `%`, `;`, control or non-ASCII)")]
    Escape,
    #[error("the path is outside the service's allowed prefixes")]
    NotAllowed,
}

/// Validates `client_path` against `prefixes` and appends it to `base`.
pub fn backend_url(base: &Url, client_path: &str, prefixes: &[String]) -> Result<Url, PathError> {
    if client_path.is_empty() || client_path.len() > MAX_PATH_BYTES {
        return Err(PathError::Length);
    }
    if !client_path.starts_with('/') || client_path.starts_with("//") {
        return Err(PathError::NotRelative);
    }
    if client_path
        .bytes()
        .any(|b| !(0x21..=0x7e).contains(&b) || b == b'\\' || b == b'#')
    {
        return Err(PathError::Character);
    }
    let (path, query) = match client_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (client_path, None),
    };
    if path != "/" && path[1..].split('/').any(climbs) {
        return Err(PathError::Traversal);
    }
    check_escapes(path, true)?;
    if let Some(q) = query {
        check_escapes(q, false)?;
    }
    if !prefixes.iter().any(|p| within(path, p)) {
        return Err(PathError::NotAllowed);
    }
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url.set_query(query);
    // Defence in depth: whatever happened above, the request goes to the base's origin.
    if url.origin() != base.origin() || !url.path().starts_with(base.path().trim_end_matches('/')) {
        return Err(PathError::NotRelative);
    }
    Ok(url)
}

/// Whether a segment could mean "here" or "up" to some server: empty, or
/// only dots (`..`, and `...` that some servers fold to it), also with a
/// servlet path parameter after it (`..;x`, `.;`), which Java servers strip
/// before resolving the path while proxies do not.
fn climbs(segment: &str) -> bool {
    let name = segment.split(';').next().unwrap_or_default();
    name.bytes().all(|b| b == b'.')
}

/// Percent escapes must be well formed; in the path they must not hide a
/// separator, a dot, a second escape level or a control byte.
fn check_escapes(s: &str, in_path: bool) -> Result<(), PathError> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::Escape)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PathError::Escape)?;
            // In the path, no escape may hide a separator, a dot, a path
            // parameter, a second escape level, or non-ASCII (percent-encoded
            // UTF-8, including overlong forms of `.` and `/` like `%c0%ae`).
            let forbidden = value < 0x20 || value == 0x7f || (in_path && (value >= 0x80 || b"./\\%;".contains(&value)));
            if forbidden {
                return Err(PathError::Escape);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// `path` is `prefix` or below it, on a segment boundary.
fn within(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix) || path == prefix.trim_end_matches('/');
    }
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://10.0.0.5:8080/api").expect("base")
    }

    fn all() -> Vec<String> {
        vec!["/".into()]
    }

    #[test]
    fn appends_a_clean_path_and_query_to_the_base() {
        let u = backend_url(&base(), "/orders/42?expand=items&x=%20y", &all()).expect("valid");
        assert_eq!(u.as_str(), "http://10.0.0.5:8080/api/orders/42?expand=items&x=%20y");
        let u = backend_url(&Url::parse("http://h/").expect("base"), "/a%41b", &all()).expect("valid");
        assert_eq!(u.as_str(), "http://h/a%41b");
    }

    #[test]
    fn every_escape_attempt_is_refused() {
        let attacks = [
            ("", PathError::Length),
            ("orders", PathError::NotRelative),
            ("//evil.example/x", PathError::NotRelative),
            ("http://evil.example/x", PathError::NotRelative),
            ("https:/x", PathError::NotRelative),
            ("javascript:alert(1)", PathError::NotRelative),
            ("/../admin", PathError::Traversal),
            ("/a/../../admin", PathError::Traversal),
            ("/a/./b", PathError::Traversal),
            ("/a//b", PathError::Traversal),
            ("/%2e%2e/admin", PathError::Escape),
            ("/%2E%2E/admin", PathError::Escape),
            ("/a/%2fetc", PathError::Escape),
            ("/a/%5c..", PathError::Escape),
            ("/%252e%252e/admin", PathError::Escape),
            ("/a%0d%0aHost:%20evil", PathError::Escape),
            ("/a%zz", PathError::Escape),
            ("/a%2", PathError::Escape),
            ("/a\r\nHost: evil", PathError::Character),
            ("/a\nb", PathError::Character),
            ("/a b", PathError::Character),
            ("/a\\..\\b", PathError::Character),
            ("/a#frag", PathError::Character),
            ("/caf\u{e9}", PathError::Character),
            ("/q?x=%0d%0a", PathError::Escape),
            // Servlet-style path parameters and overlong dots.
            ("/public/..;/admin", PathError::Traversal),
            ("/public/.;/admin", PathError::Traversal),
            ("/public/..;jsessionid=1/admin", PathError::Traversal),
            ("/public/;x/admin", PathError::Traversal),
            ("/public/.../admin", PathError::Traversal),
            ("/public/..%3b/admin", PathError::Escape),
            ("/public/%c0%ae%c0%ae/admin", PathError::Escape),
            ("/public/%e2%80%a5/admin", PathError::Escape),
            ("/caf%c3%a9", PathError::Escape),
            ("/public/%u002e%u002e/admin", PathError::Escape),
        ];
        for (path, expected) in attacks {
            assert_eq!(backend_url(&base(), path, &all()), Err(expected), "{path:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(backend_url(&base(), &long, &all()), Err(PathError::Length));
    }

    #[test]
    fn prefixes_hold_on_segment_boundaries() {
        let prefixes = vec!["/orders".to_owned(), "/public/".to_owned()];
        assert!(backend_url(&base(), "/orders", &prefixes).is_ok());
        assert!(backend_url(&base(), "/orders/1", &prefixes).is_ok());
        assert!(backend_url(&base(), "/public/x", &prefixes).is_ok());
        assert_eq!(backend_url(&base(), "/ordersx", &prefixes), Err(PathError::NotAllowed));
        assert_eq!(backend_url(&base(), "/admin", &prefixes), Err(PathError::NotAllowed));
    }
}
