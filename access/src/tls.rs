//! TLS for the client listeners (rustls): the certificate chain and key from
//! PEM files, TLS 1.2 and 1.3 only, ALPN (`duplex/1` on the TCP listener,
//! `http/1.1` on WebSocket), optional client certificates, and session
//! resumption (tickets and a bounded session cache, both kept across
//! reloads, so a reconnecting phone skips the full handshake).
//!
//! [`Certificates::reload`] swaps the certificate for new handshakes only:
//! a live connection keeps the session it has. A new certificate that does
//! not load (or does not match its key) is refused with a log line and the
//! old one stays. [`watch`] reloads on SIGHUP and when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::signal::unix::Signal;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsConfig;

/// ALPN of the private protocol over TLS.
pub const ALPN_DUPLEX: &[u8] = b"duplex/1";
/// ALPN of WebSocket over TLS (the upgrade is an HTTP/1.1 request).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Sessions remembered for resumption without tickets (TLS 1.2 clients);
/// the least recently used one goes when it is full.
const SESSION_CACHE: usize = 16_384;
/// How often [`watch`] looks at the files' modification times.
const FILE_CHECK: Duration = Duration::from_secs(2);

/// Why a certificate could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The acceptors of both TLS listeners, replaced together on reload.
struct Acceptors {
    tcp: TlsAcceptor,
    wss: TlsAcceptor,
}

/// The node's TLS certificate, reloadable while it serves.
pub struct Certificates {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    current: RwLock<Arc<Acceptors>>,
    /// The files' modification times when last loaded.
    loaded: Mutex<Vec<Option<SystemTime>>>,
}

impl Certificates {
    /// Loads the files named by `files`; fails if they do not make a usable certificate.
    pub fn load(files: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let stamps = stamps(files);
        let acceptors = build(files, &provider, &ticketer, &sessions)?;
        Ok(Arc::new(Certificates {
            files: files.clone(),
            provider,
            ticketer,
            sessions,
            current: RwLock::new(Arc::new(acceptors)),
            loaded: Mutex::new(stamps),
        }))
    }

    /// The acceptor for new connections of the private protocol over TLS.
    pub fn tcp(&self) -> TlsAcceptor {
        self.read().tcp.clone()
    }

    /// The acceptor for new WebSocket connections over TLS.
    pub fn wss(&self) -> TlsAcceptor {
        self.read().wss.clone()
    }

    fn read(&self) -> Arc<Acceptors> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again; new handshakes use the new certificate. On
    /// failure the current one stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.files);
        let acceptors = build(&self.files, &self.provider, &self.ticketer, &self.sessions)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(acceptors);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(())
    }

    /// Whether a file changed since it was last loaded (or tried).
    fn changed(&self) -> bool {
        let now = stamps(&self.files);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == now {
            return false;
        }
        // Remembered even if the reload fails: a bad file is reported once, not every check.
        *loaded = now;
        true
    }
}

fn stamps(files: &TlsConfig) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

fn build(
    files: &TlsConfig,
    provider: &Arc<CryptoProvider>,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<Acceptors, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| file_error(&files.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.cert_file, e))?;
    if chain.is_empty() {
        return Err(file_error(&files.cert_file, "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| file_error(&files.key_file, e))?;
    let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca_file {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
                    roots
                        .add(cert.map_err(|e| file_error(ca, e))?)
                        .map_err(|e| file_error(ca, e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| file_error(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| file_error(&files.cert_file, format!("does not go with the key: {e}")))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        config.ticketer = ticketer.clone();
        config.session_storage = sessions.clone();
        Ok(Arc::new(config))
    };
    Ok(Acceptors {
        tcp: TlsAcceptor::from(config(ALPN_DUPLEX)?),
        wss: TlsAcceptor::from(config(ALPN_HTTP1)?),
    })
}

/// Reloads `certs` on SIGHUP (`hangup`, registered by the caller before
/// the node reports ready, so an early SIGHUP cannot kill the process) and
/// when its files change, until `shutdown`.
pub async fn watch(certs: Arc<Certificates>, mut hangup: Option<Signal>, shutdown: CancellationToken) {
    let mut check = tokio::time::interval(FILE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = check.tick() => {
                if !certs.changed() {
                    continue;
                }
                "the files changed"
            }
        };
        match certs.reload() {
            Ok(()) => info!(cause = why, "TLS certificate reloaded; new connections use it"),
            Err(e) => warn!(cause = why, error = %e, "new TLS certificate refused; keeping the current one"),
        }
    }
}
