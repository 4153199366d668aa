//! Web Push (RFC 8030) with message encryption (RFC 8291, `aes128gcm` of
//! RFC 8188) and VAPID (RFC 8292), on RustCrypto's P-256, HKDF and AES-GCM.
//! Written here rather than taken from the `web-push` crate, whose
//! encryption goes through OpenSSL (a C library in every build and process).

use std::path::Path;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use sha2::Sha256;

use super::{Notification, Sent};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// Record size written into the header: one record holds the whole message.
const RECORD_SIZE: u32 = 4096;

pub struct WebPush {
    /// The VAPID key (P-256), as jsonwebtoken signs with it.
    vapid: jsonwebtoken::EncodingKey,
    /// Its public key, uncompressed, base64url: the `k=` of the Authorization header.
    vapid_public: String,
    /// `mailto:` or `https:` contact of the sender, for push services.
    subject: String,
    http: reqwest::Client,
}

impl WebPush {
    pub fn load(vapid_key_file: &Path, subject: &str) -> Result<WebPush, String> {
        let pem = std::fs::read_to_string(vapid_key_file).map_err(|e| format!("{}: {e}", vapid_key_file.display()))?;
        let secret: p256::SecretKey = p256::pkcs8::DecodePrivateKey::from_pkcs8_pem(&pem)
            .map_err(|e| format!("{}: not a PKCS#8 P-256 key: {e}", vapid_key_file.display()))?;
        let vapid_public = B64.encode(secret.public_key().to_encoded_point(false).as_bytes());
        let vapid = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| format!("{}: {e}", vapid_key_file.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("Web Push client: {e}"))?;
        Ok(WebPush {
            vapid,
            vapid_public,
            subject: subject.to_owned(),
            http,
        })
    }

    /// `subscription` is the stored JSON (`endpoint`, `keys.p256dh`, `keys.auth`).
    pub async fn send(&self, note: &Notification, subscription: &str) -> Sent {
        let sub: serde_json::Value = match serde_json::from_str(subscription) {
            Ok(s) => s,
            Err(e) => return Sent::Refused(format!("stored subscription: {e}")),
        };
        let (Some(endpoint), Some(p256dh), Some(auth)) = (
            sub["endpoint"].as_str(),
            sub["keys"]["p256dh"].as_str(),
            sub["keys"]["auth"].as_str(),
        ) else {
            return Sent::Refused("stored subscription lacks endpoint or keys".into());
        };
        let payload = serde_json::json!({
            "title": note.title,
            "body": note.body,
            "data": note.data,
        })
        .to_string();
        let body = match encrypt(payload.as_bytes(), p256dh, auth) {
            Ok(b) => b,
            Err(e) => return Sent::Refused(e),
        };
        let audience = match endpoint_origin(endpoint) {
            Some(a) => a,
            None => return Sent::Refused("endpoint is not a URL".into()),
        };
        let claims = serde_json::json!({
            "aud": audience,
            "exp": crate::now_ms() / 1000 + 12 * 3600,
            "sub": self.subject,
        });
        let jwt = match jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &self.vapid,
        ) {
            Ok(t) => t,
            Err(e) => return Sent::Retry(format!("signing: {e}")),
        };
        let mut call = self
            .http
            .post(endpoint)
            .header("authorization", format!("vapid t={jwt}, k={}", self.vapid_public))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", note.ttl_s.to_string())
            .header(
                "urgency",
                if note.title.is_some() || note.body.is_some() {
                    "high"
                } else {
                    "normal"
                },
            )
            .body(body);
        if let Some(topic) = note.collapse_key.as_deref().filter(|t| topic_ok(t)) {
            call = call.header("topic", topic);
        }
        let answer = match call.send().await {
            Ok(a) => a,
            Err(e) => return Sent::Retry(e.to_string()),
        };
        match answer.status().as_u16() {
            200..=299 => Sent::Accepted,
            404 | 410 => Sent::DeadToken,
            429 | 500..=599 => Sent::Retry(answer.status().to_string()),
            _ => Sent::Refused(answer.status().to_string()),
        }
    }
}

/// A `Topic` header is at most 32 URL-safe base64 characters (RFC 8030).
fn topic_ok(t: &str) -> bool {
    t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `scheme://host[:port]` of the push service: the VAPID token's audience.
fn endpoint_origin(endpoint: &str) -> Option<String> {
    let uri = axum::http::Uri::try_from(endpoint).ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?.as_str()))
}

/// RFC 8291: the `aes128gcm` body of one message to the user agent whose
/// public key is `p256dh` and auth secret `auth` (both base64url).
pub fn encrypt(plaintext: &[u8], p256dh: &str, auth: &str) -> Result<Vec<u8>, String> {
    // A fresh sender key and salt per message, as the RFC requires.
    let as_secret = p256::SecretKey::random(&mut rand_core_06());
    encrypt_with(plaintext, p256dh, auth, &as_secret, rand::random())
}

fn encrypt_with(
    plaintext: &[u8],
    p256dh: &str,
    auth: &str,
    as_secret: &p256::SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, String> {
    let ua_public_bytes = B64.decode(p256dh).map_err(|_| "p256dh is not base64url")?;
    let auth_secret = B64.decode(auth).map_err(|_| "auth is not base64url")?;
    let ua_public = p256::PublicKey::from_sec1_bytes(&ua_public_bytes).map_err(|_| "p256dh is not a P-256 point")?;
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());
    // IKM = HKDF(auth, ecdh, "WebPush: info" || 0 || ua_public || as_public, 32)
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(&ua_public_bytes);
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&auth_secret), &shared.raw_secret_bytes()[..])
        .expand(&key_info, &mut ikm)
        .map_err(|_| "hkdf")?;
    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| "hkdf")?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| "hkdf")?;
    let mut record = plaintext.to_vec();
    // The last (and only) record's padding delimiter.
    record.push(2);
    let cipher = aes_gcm::Aes128Gcm::new_from_slice(&cek).map_err(|_| "aes key")?;
    let sealed = cipher
        .encrypt(&aes_gcm::Nonce::from(nonce), record.as_slice())
        .map_err(|_| "aes-gcm")?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// The OS random source, as the P-256 crate takes it.
fn rand_core_06() -> p256::elliptic_curve::rand_core::OsRng {
    p256::elliptic_curve::rand_core::OsRng
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291's example: the user agent's keys and auth secret; our
    /// ciphertext (fresh salt and sender key) must open with them as the
    /// RFC's receiver steps do.
    #[test]
    fn an_encrypted_message_opens_with_the_subscription_s_keys() {
        let ua_private = B64.decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94").expect("key");
        let ua_secret = p256::SecretKey::from_slice(&ua_private).expect("secret");
        let p256dh = B64.encode(ua_secret.public_key().to_encoded_point(false).as_bytes());
        assert_eq!(
            p256dh,
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
        );
        let auth = "BTBZMqHH6r4Tts7J_aSIgg";
        let message = b"When I grow up, I want to be a watermelon";
        let body = encrypt(message, &p256dh, auth).expect("encrypt");
        assert_eq!(decrypt(&body, &ua_secret, auth), message);
        // With the RFC's sender key and salt, the RFC's exact message (section 5).
        let as_secret =
            p256::SecretKey::from_slice(&B64.decode("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw").expect("key"))
                .expect("sender key");
        let salt: [u8; 16] = B64
            .decode("DGv6ra1nlYgDCS1FRnbzlw")
            .expect("salt")
            .try_into()
            .expect("16 bytes");
        let body = encrypt_with(message, &p256dh, auth, &as_secret, salt).expect("encrypt");
        assert_eq!(
            B64.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    /// The user agent's side of RFC 8291 (what a browser does).
    pub(crate) fn decrypt(body: &[u8], ua_secret: &p256::SecretKey, auth: &str) -> Vec<u8> {
        let (salt, rest) = body.split_at(16);
        let id_len = rest[4] as usize;
        let as_public_bytes = &rest[5..5 + id_len];
        let sealed = &rest[5 + id_len..];
        let as_public = p256::PublicKey::from_sec1_bytes(as_public_bytes).expect("sender key");
        let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
        let mut key_info = b"WebPush: info\0".to_vec();
        key_info.extend_from_slice(ua_secret.public_key().to_encoded_point(false).as_bytes());
        key_info.extend_from_slice(as_public_bytes);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&B64.decode(auth).expect("auth")), &shared.raw_secret_bytes()[..])
            .expand(&key_info, &mut ikm)
            .expect("ikm");
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).expect("cek");
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce).expect("nonce");
        let mut plain = aes_gcm::Aes128Gcm::new_from_slice(&cek)
            .expect("key")
            .decrypt(&aes_gcm::Nonce::from(nonce), sealed)
            .expect("opens");
        assert_eq!(plain.pop(), Some(2), "the last record's delimiter");
        plain
    }
}
