//! TLS for `tls://` and `wss://` endpoints: the webpki roots (Mozilla's
//! list, built in, so the SDK behaves the same on every platform) plus any
//! CA the application adds, host name verification and SNI by rustls.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// ALPN of the private protocol over TLS (the server's `duplex/1`).
const ALPN_DUPLEX: &[u8] = b"duplex/1";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Which certificate authorities a client trusts, ready to connect.
#[derive(Clone)]
pub struct TlsClient {
    duplex: TlsConnector,
    http1: TlsConnector,
    roots: Arc<RootCertStore>,
    resume: bool,
    /// A client certificate (chain, key) for servers that require one (mTLS).
    identity: Option<Arc<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("roots", &self.roots.len()).finish()
    }
}

/// A CA file that cannot be used, or a TLS handshake that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

impl TlsClient {
    /// Trusts the webpki roots only.
    pub fn webpki() -> Result<Self, TlsError> {
        Self::trusting(webpki_store())
    }

    /// Trusts the webpki roots and the CA certificates in `pem_file` (e.g. a
    /// private CA of a test or an internal deployment).
    pub fn with_extra_ca(pem_file: &Path) -> Result<Self, TlsError> {
        let mut roots = webpki_store();
        let mut added = 0;
        for cert in
            CertificateDer::pem_file_iter(pem_file).map_err(|e| TlsError(format!("{}: {e}", pem_file.display())))?
        {
            let cert = cert.map_err(|e| TlsError(format!("{}: {e}", pem_file.display())))?;
            roots
                .add(cert)
                .map_err(|e| TlsError(format!("{}: {e}", pem_file.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError(format!("{}: holds no certificate", pem_file.display())));
        }
        Self::trusting(roots)
    }

    fn trusting(roots: RootCertStore) -> Result<Self, TlsError> {
        Self::build(Arc::new(roots), true, None)
    }

    /// The same trust, without session resumption: every connect pays a
    /// full handshake (for measuring what resumption saves).
    pub fn without_resumption(&self) -> Result<Self, TlsError> {
        Self::build(self.roots.clone(), false, self.identity.clone())
    }

    /// The same trust, presenting the client certificate in `cert_file`
    /// (PEM chain) with its key to servers that require one (mTLS).
    pub fn with_client_certificate(&self, cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let read_error = |path: &Path, e: &dyn std::fmt::Display| TlsError(format!("{}: {e}", path.display()));
        let chain = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| read_error(cert_file, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read_error(cert_file, &e))?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| read_error(key_file, &e))?;
        Self::build(self.roots.clone(), self.resume, Some(Arc::new((chain, key))))
    }

    fn build(
        roots: Arc<RootCertStore>,
        resume: bool,
        identity: Option<Arc<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>>,
    ) -> Result<Self, TlsError> {
        let connector = |alpn: &[u8]| -> Result<TlsConnector, TlsError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?
                .with_root_certificates(roots.clone());
            let mut config = match &identity {
                Some(id) => builder
                    .with_client_auth_cert(id.0.clone(), id.1.clone_key())
                    .map_err(|e| TlsError(format!("client certificate: {e}")))?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![alpn.to_vec()];
            if !resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(TlsClient {
            duplex: connector(ALPN_DUPLEX)?,
            http1: connector(ALPN_HTTP1)?,
            roots,
            resume,
            identity,
        })
    }

    /// The TLS handshake over `stream` with `host` (its name is checked
    /// against the certificate and sent as SNI).
    pub(crate) async fn handshake(
        &self,
        stream: TcpStream,
        host: &str,
        websocket: bool,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| TlsError(format!("{host}: {e}")))?;
        let connector = if websocket { &self.http1 } else { &self.duplex };
        connector
            .connect(name, stream)
            .await
            .map_err(|e| TlsError(format!("handshake with {host}: {e}")))
    }
}

fn webpki_store() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}
