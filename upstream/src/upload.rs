//! Uploads: the client's `UploadAck` means the backend answered (2xx, or a
//! final 4xx reported in the ack) or the upload is durably spooled in the
//! store. Each (client, upload id) reaches the backend once: the first copy
//! claims the frame in the store, a resend gets the recorded outcome (or, if
//! the first copy is still in flight, waits for it).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use duplex_shared::links::{ClientContext, LinkError};
use duplex_shared::protocol::{Headers, Upload, UploadAck};
use duplex_shared::trace::child_traceparent;
use duplex_store::{now_ms, FrameClaim, SpoolPush};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::call::{idempotency_key, Call, Service};
use crate::{store_unavailable, Upstream};

/// Outcome recorded for a spooled upload (a status is recorded otherwise).
const SPOOLED: &str = "spooled";

/// An upload waiting in a service's spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spooled {
    pub client_id: String,
    pub user_id: String,
    pub upload_id: u64,
    pub path: String,
    pub headers: Headers,
    pub body: Bytes,
    pub traceparent: String,
    pub expires_ms: u64,
}

impl Spooled {
    /// The backend call for this upload; the same key as the first try had.
    pub fn call(&self, deadline: Instant) -> Call<'_> {
        Call {
            method: Method::POST,
            path: &self.path,
            headers: &self.headers,
            body: self.body.clone(),
            client_id: &self.client_id,
            user_id: &self.user_id,
            idempotency_key: idempotency_key(&self.client_id, "u", self.upload_id),
            traceparent: self.traceparent.clone(),
            // The key makes a repeat harmless for the backend.
            retry_safe: true,
            deadline,
        }
    }
}

fn ack_from_outcome(id: u64, outcome: &str) -> UploadAck {
    match outcome {
        SPOOLED => UploadAck {
            id,
            status: 202,
            spooled: true,
        },
        status => UploadAck {
            id,
            status: status.parse().unwrap_or(200),
            spooled: false,
        },
    }
}

impl Upstream {
    /// `takeover`: the node that had this upload first was lost mid-call, so
    /// its claim is taken over (the idempotency key makes a repeat harmless).
    pub(crate) async fn upload_frame(
        &self,
        from: &ClientContext,
        up: Upload,
        takeover: bool,
    ) -> Result<UploadAck, LinkError> {
        let service = self.service(&up.service)?;
        service
            .check_path(&up.path)
            .map_err(|e| LinkError::Rejected(e.to_string()))?;
        let key = crate::request::frame_claim_key(&from.user_id, "u", up.id);
        let claim_ms = service.config.deadline_ms + 5_000;
        let waited_until = Instant::now() + Duration::from_millis(service.config.deadline_ms);
        let mut poll = Duration::from_millis(20);
        loop {
            match self
                .store
                .begin_frame(&from.client_id, &key, claim_ms)
                .await
                .map_err(store_unavailable)?
            {
                FrameClaim::New => break,
                FrameClaim::InFlight if takeover => break,
                FrameClaim::Done(outcome) => return Ok(ack_from_outcome(up.id, &outcome)),
                FrameClaim::InFlight if Instant::now() < waited_until => {
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(Duration::from_millis(500));
                }
                FrameClaim::InFlight => {
                    return Err(LinkError::Unavailable(
                        "an earlier copy of this upload is still in flight; resend later".into(),
                    ))
                }
            }
        }
        let result = self.upload_once(&service, from, up).await;
        let store = &self.store;
        let recorded = match &result {
            Ok(ack) => {
                let outcome = if ack.spooled {
                    SPOOLED.to_owned()
                } else {
                    ack.status.to_string()
                };
                store
                    .finish_frame(&from.client_id, &key, &outcome, self.config.dedup_window_s * 1000)
                    .await
            }
            Err(_) => store.forget_frame(&from.client_id, &key).await,
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record an upload's outcome; a resend may reach the backend again");
        }
        result
    }

    async fn upload_once(&self, service: &Service, from: &ClientContext, up: Upload) -> Result<UploadAck, LinkError> {
        if let Some(sink) = &service.sink {
            return self.upload_to_sink(service, sink, from, up).await;
        }
        let spooled = Spooled {
            client_id: from.client_id.clone(),
            user_id: from.user_id.clone(),
            upload_id: up.id,
            traceparent: child_traceparent(up.headers.get("traceparent").map(String::as_str)),
            path: up.path,
            headers: up.headers,
            body: up.body,
            expires_ms: now_ms() + self.config.spool_ttl_s * 1000,
        };
        // While older uploads wait in the spool, new ones queue behind them to keep the order.
        if !service.spool_waiting.load(Ordering::Relaxed) {
            let deadline = Instant::now() + Duration::from_millis(service.config.deadline_ms);
            match service.call(&spooled.call(deadline)).await {
                Ok(resp) if resp.status < 500 => {
                    return Ok(UploadAck {
                        id: up.id,
                        status: resp.status,
                        spooled: false,
                    })
                }
                Ok(_) | Err(_) => {}
            }
        }
        let data = rmp_serde::to_vec_named(&spooled).map_err(|e| LinkError::Rejected(e.to_string()))?;
        let pushed = self
            .store
            .spool_push(&service.name, &from.user_id, &data, &self.config.spool_limits())
            .await
            .map_err(store_unavailable)?;
        let full = match pushed {
            SpoolPush::Stored => None,
            SpoolPush::ServiceFull => Some(("service", "the spool of this service is full")),
            SpoolPush::OwnerFull => Some(("user", "your uploads already fill your share of this service's spool")),
        };
        if let Some((which, why)) = full {
            self.metrics.inc(
                "duplex_uploads_spool_refused_total",
                &[("service", &service.name), ("limit", which)],
            );
            return Err(LinkError::Unavailable(format!(
                "the backend of {:?} is unavailable and {why}; resend later",
                service.name
            )));
        }
        self.metrics
            .inc("duplex_uploads_spooled_total", &[("service", &service.name)]);
        service.spool_waiting.store(true, Ordering::Relaxed);
        service.spool_wake.notify_one();
        Ok(UploadAck {
            id: up.id,
            status: 202,
            spooled: true,
        })
    }
}
