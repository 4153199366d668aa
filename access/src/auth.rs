//! Token verification: JWT with an algorithm pinned by configuration.
//!
//! The token's own `alg` header is never trusted: the verifier accepts exactly
//! the configured algorithm, so an HS256 token cannot pass where RS256 is
//! configured (the classic key-confusion attack) and `none` never passes.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, JwtAlgorithm};
use duplex_shared::config::ConfigError;
use duplex_shared::protocol::ErrorCode;

/// Claims Duplex reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// One audience, or several (RFC 7519 allows both forms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The one client id this token may connect as, if the issuer binds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Audience::One(aud.to_owned())
    }
}

/// A rejected token, with the protocol code the client receives.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

/// Checks tokens against one configured key and algorithm.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    require_client_claim: bool,
    expiry_grace: std::time::Duration,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

fn jwt_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

impl TokenVerifier {
    pub fn new(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        let bad = |msg: String| ConfigError::Invalid {
            field: "auth".into(),
            message: msg,
        };
        let key = match cfg.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = cfg.secret.as_deref().unwrap_or_default();
                DecodingKey::from_secret(secret.as_bytes())
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                let pem = cfg.public_key_pem()?;
                let parsed = if cfg.algorithm == JwtAlgorithm::RS256 {
                    DecodingKey::from_rsa_pem(pem.as_bytes())
                } else {
                    DecodingKey::from_ec_pem(pem.as_bytes())
                };
                parsed.map_err(|e| bad(format!("public key is not a valid PEM key: {e}")))?
            }
        };
        let mut validation = Validation::new(jwt_algorithm(cfg.algorithm));
        validation.leeway = cfg.leeway_s;
        validation.validate_nbf = true;
        // A configured audience or issuer is a required claim: a token
        // without it was not issued for this deployment.
        let mut required = vec!["exp", "sub"];
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(TokenVerifier {
            key,
            validation,
            require_client_claim: cfg.require_client_claim,
            expiry_grace: std::time::Duration::from_secs(cfg.expiry_grace_s),
        })
    }

    /// How long a live connection whose token expired may take to refresh it.
    pub fn expiry_grace(&self) -> std::time::Duration {
        self.expiry_grace
    }

    /// Verifies a token presented by a connection for `client_id`: a `cid`
    /// claim must name it, and must be there when the configuration says so.
    pub fn verify_for(&self, token: &str, client_id: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        match &claims.cid {
            Some(cid) if cid == client_id => Ok(claims),
            Some(_) => Err(AuthError {
                code: ErrorCode::ClientIdTaken,
                message: "the token's `cid` claim names another client_id".into(),
            }),
            None if self.require_client_claim => Err(AuthError {
                code: ErrorCode::TokenInvalid,
                message: "the token has no `cid` claim, which this server requires".into(),
            }),
            None => Ok(claims),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let code = match e.kind() {
                ErrorKind::ExpiredSignature => ErrorCode::TokenExpired,
                ErrorKind::ImmatureSignature => ErrorCode::TokenNotYetValid,
                ErrorKind::InvalidAlgorithm => ErrorCode::TokenWrongAlgorithm,
                ErrorKind::InvalidAudience => ErrorCode::TokenBadAudience,
                ErrorKind::InvalidIssuer => ErrorCode::TokenBadIssuer,
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => ErrorCode::TokenBadAudience,
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => ErrorCode::TokenBadIssuer,
                _ => ErrorCode::TokenInvalid,
            };
            AuthError {
                code,
                message: format!("token rejected: {e}"),
            }
        })?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
            return Err(AuthError {
                code: ErrorCode::TokenInvalid,
                message: "token `sub` must be 1..=256 bytes".into(),
            });
        }
        Ok(data.claims)
    }
}

/// Mints an HS256 token (development and tests): `sub`, valid for `ttl_s` from `now_s`.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, MintError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| MintError(e.to_string()))
}

/// A token could not be signed (this node's fault, not the caller's).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot sign the token: {0}")]
pub struct MintError(String);

/// Seconds since the Unix epoch, from the wall clock (token times are wall-clock times).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims for a development token of `sub` valid for `ttl_s` seconds.
pub fn dev_claims(sub: &str, ttl_s: u64) -> Claims {
    let now = unix_now();
    Claims {
        sub: sub.to_owned(),
        exp: now + ttl_s,
        nbf: None,
        iat: Some(now),
        aud: None,
        iss: None,
        cid: None,
    }
}
