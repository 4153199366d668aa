//! Token verification: every algorithm, pinned; claims enforced.

use duplex_access::auth::{dev_claims, mint_hs256, unix_now, Audience, Claims, TokenVerifier};
use duplex_access::config::{AuthConfig, JwtAlgorithm};
use duplex_shared::protocol::ErrorCode;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes";
const RS_PRIVATE: &str = include_str!("keys/rs256-private.pem");
const RS_PUBLIC: &str = include_str!("keys/rs256-public.pem");
const ES_PRIVATE: &str = include_str!("keys/es256-private.pem");
const ES_PUBLIC: &str = include_str!("keys/es256-public.pem");

fn hs_verifier() -> TokenVerifier {
    let mut cfg = AuthConfig {
        secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    cfg.resolve(false).expect("valid");
    TokenVerifier::new(&cfg).expect("verifier")
}

fn code(v: &TokenVerifier, token: &str) -> ErrorCode {
    v.verify(token).expect_err("must be rejected").code
}

#[test]
fn hs256_accepts_valid_and_rejects_expired_future_garbage_and_other_algorithms() {
    let v = hs_verifier();
    let ok = mint_hs256(SECRET, &dev_claims("alice", 60)).expect("mint");
    assert_eq!(v.verify(&ok).expect("valid").sub, "alice");

    let mut expired = dev_claims("alice", 0);
    expired.exp = unix_now() - 3600;
    assert_eq!(
        code(&v, &mint_hs256(SECRET, &expired).expect("mint")),
        ErrorCode::TokenExpired
    );

    let mut future = dev_claims("alice", 7200);
    future.nbf = Some(unix_now() + 3600);
    assert_eq!(
        code(&v, &mint_hs256(SECRET, &future).expect("mint")),
        ErrorCode::TokenNotYetValid
    );

    assert_eq!(code(&v, "not-a-jwt"), ErrorCode::TokenInvalid);
    let wrong_key = mint_hs256("another-secret-another-secret-another", &dev_claims("a", 60)).expect("mint");
    assert_eq!(code(&v, &wrong_key), ErrorCode::TokenInvalid);

    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &dev_claims("a", 60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint");
    assert_eq!(code(&v, &hs512), ErrorCode::TokenWrongAlgorithm);
    // alg "none": header {"alg":"none","typ":"JWT"}, no signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert!(matches!(
        code(&v, none),
        ErrorCode::TokenInvalid | ErrorCode::TokenWrongAlgorithm
    ));
}

#[test]
fn audience_and_issuer_are_enforced_when_configured() {
    let mut cfg = AuthConfig {
        secret: Some(SECRET.into()),
        audience: Some("duplex".into()),
        issuer: Some("https://auth.example".into()),
        ..AuthConfig::default()
    };
    cfg.resolve(false).expect("valid");
    let v = TokenVerifier::new(&cfg).expect("verifier");
    let good = Claims {
        aud: Some("duplex".into()),
        iss: Some("https://auth.example".into()),
        ..dev_claims("u", 60)
    };
    assert!(v.verify(&mint_hs256(SECRET, &good).expect("mint")).is_ok());
    let bad_aud = Claims {
        aud: Some("other".into()),
        ..good.clone()
    };
    assert_eq!(
        code(&v, &mint_hs256(SECRET, &bad_aud).expect("mint")),
        ErrorCode::TokenBadAudience
    );
    let bad_iss = Claims {
        iss: Some("https://evil".into()),
        ..good
    };
    assert_eq!(
        code(&v, &mint_hs256(SECRET, &bad_iss).expect("mint")),
        ErrorCode::TokenBadIssuer
    );
}

#[test]
fn configured_audience_and_issuer_are_required_and_aud_may_be_an_array() {
    let mut cfg = AuthConfig {
        secret: Some(SECRET.into()),
        audience: Some("duplex".into()),
        issuer: Some("https://auth.example".into()),
        ..AuthConfig::default()
    };
    cfg.resolve(false).expect("valid");
    let v = TokenVerifier::new(&cfg).expect("verifier");
    let good = Claims {
        aud: Some(Audience::Many(vec!["billing".into(), "duplex".into()])),
        iss: Some("https://auth.example".into()),
        ..dev_claims("u", 60)
    };
    assert!(v.verify(&mint_hs256(SECRET, &good).expect("mint")).is_ok());
    let others = Claims {
        aud: Some(Audience::Many(vec!["billing".into()])),
        ..good.clone()
    };
    assert_eq!(
        code(&v, &mint_hs256(SECRET, &others).expect("mint")),
        ErrorCode::TokenBadAudience
    );
    let no_aud = Claims {
        aud: None,
        ..good.clone()
    };
    assert_eq!(
        code(&v, &mint_hs256(SECRET, &no_aud).expect("mint")),
        ErrorCode::TokenBadAudience
    );
    let no_iss = Claims { iss: None, ..good };
    assert_eq!(
        code(&v, &mint_hs256(SECRET, &no_iss).expect("mint")),
        ErrorCode::TokenBadIssuer
    );
}

#[test]
fn a_cid_claim_binds_the_token_to_one_client_id() {
    let v = hs_verifier();
    let bound = Claims {
        cid: Some("bob-phone".into()),
        ..dev_claims("bob", 60)
    };
    let token = mint_hs256(SECRET, &bound).expect("mint");
    assert_eq!(v.verify_for(&token, "bob-phone").expect("own id").sub, "bob");
    assert_eq!(
        v.verify_for(&token, "bob-tablet").expect_err("other id").code,
        ErrorCode::ClientIdTaken
    );
    let unbound = mint_hs256(SECRET, &dev_claims("bob", 60)).expect("mint");
    assert!(v.verify_for(&unbound, "bob-tablet").is_ok());

    let mut cfg = AuthConfig {
        secret: Some(SECRET.into()),
        require_client_claim: true,
        ..AuthConfig::default()
    };
    cfg.resolve(false).expect("valid");
    let strict = TokenVerifier::new(&cfg).expect("verifier");
    assert_eq!(
        strict.verify_for(&unbound, "bob-tablet").expect_err("no cid").code,
        ErrorCode::TokenInvalid
    );
    assert!(strict.verify_for(&token, "bob-phone").is_ok());
}

fn public_key_verifier(alg: JwtAlgorithm, pem: &str) -> TokenVerifier {
    let mut cfg = AuthConfig {
        algorithm: alg,
        public_key: Some(pem.into()),
        ..AuthConfig::default()
    };
    cfg.resolve(false).expect("valid");
    TokenVerifier::new(&cfg).expect("verifier")
}

#[test]
fn rs256_and_es256_verify_with_public_keys_and_refuse_key_confusion() {
    let rs = public_key_verifier(JwtAlgorithm::RS256, RS_PUBLIC);
    let token = encode(
        &Header::new(Algorithm::RS256),
        &dev_claims("bob", 60),
        &EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).expect("key"),
    )
    .expect("mint");
    assert_eq!(rs.verify(&token).expect("valid").sub, "bob");
    // Classic confusion: an HS256 token whose secret is the RSA public key.
    let confused = mint_hs256(RS_PUBLIC, &dev_claims("mallory", 60)).expect("mint");
    assert_eq!(code(&rs, &confused), ErrorCode::TokenWrongAlgorithm);

    let es = public_key_verifier(JwtAlgorithm::ES256, ES_PUBLIC);
    let token = encode(
        &Header::new(Algorithm::ES256),
        &dev_claims("carol", 60),
        &EncodingKey::from_ec_pem(ES_PRIVATE.as_bytes()).expect("key"),
    )
    .expect("mint");
    assert_eq!(es.verify(&token).expect("valid").sub, "carol");
    assert_eq!(code(&es, &token.replace('.', ".x")), ErrorCode::TokenInvalid);
    assert_eq!(code(&rs, &token), ErrorCode::TokenWrongAlgorithm);
}

#[test]
fn configuration_refuses_short_secrets_and_dev_secret_beyond_loopback() {
    let mut short = AuthConfig {
        secret: Some("short".into()),
        ..AuthConfig::default()
    };
    assert!(short.resolve(true).is_err());
    let mut none = AuthConfig::default();
    assert!(none.resolve(false).is_err(), "no secret on a public address");
    let mut dev = AuthConfig::default();
    dev.resolve(true).expect("loopback may use the dev secret");
    let mut rs = AuthConfig {
        algorithm: JwtAlgorithm::RS256,
        ..AuthConfig::default()
    };
    assert!(rs.resolve(true).is_err(), "RS256 needs a public key");
}
