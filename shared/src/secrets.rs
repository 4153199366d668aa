//! Comparing secrets.

/// Constant-time comparison of secrets (API keys, admin tokens), so response
/// timing does not reveal how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A broker or store URL fit for logs and error messages: the password in its user
/// info (`redis://user:secret@host`, `redis://:secret@h1:1,h2:2`) becomes `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split_once(':').map_or(&rest[..at], |(user, _)| user);
    format!("{scheme}://{user}:***{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn store_urls_lose_their_password_in_messages() {
        assert_eq!(redact_url("redis://:hunter2@127.0.0.1:1/"), "redis://:***@127.0.0.1:1/");
        assert_eq!(
            redact_url("rediss://app:s3:cr3t@r.example:6380/0"),
            "rediss://app:***@r.example:6380/0"
        );
        assert_eq!(
            redact_url("redis+cluster://:pw@h1:1,h2:2"),
            "redis+cluster://:***@h1:1,h2:2"
        );
        assert_eq!(redact_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact_url("redis+sentinel://h:26379/mymaster"),
            "redis+sentinel://h:26379/mymaster"
        );
    }
}
