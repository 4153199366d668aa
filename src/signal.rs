//! The signals that end a node or a `duplex client`.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A SIGHUP listener, registered before a node starts: from then on SIGHUP
/// never ends the process (its default action); the access tier reloads
/// its TLS certificate on it.
pub fn keep_sighup() -> Option<Signal> {
    signal(SignalKind::hangup()).ok()
}

/// Ctrl-C or SIGTERM; SIGHUPs meanwhile (on `hangup`) are only noted.
pub async fn wait_for_signal(mut hangup: Option<Signal>) {
    let mut term = signal(SignalKind::terminate()).ok();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            Some(()) = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            } => return,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => tracing::info!("SIGHUP: the TLS certificate (if any) is read again"),
        }
    }
}
