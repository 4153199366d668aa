//! Uploads to a message queue instead of HTTP (`sink` in a service): the
//! client's `UploadAck` (status 202) means the broker confirmed the message
//! (publisher confirm, PubAck, `XADD` reply). A failed publish is a retryable
//! error for the client, which resends with the same id.
//!
//! Each message carries who sent it and a stable `idempotency-key`
//! (`<client>:u:<id>`, as the HTTP call has): a confirm lost on the way makes
//! the client resend, and the consumer drops the second copy by that key.

use duplex_brokers::ReconnectingSink;
use duplex_shared::links::{ClientContext, LinkError};
use duplex_shared::protocol::{Upload, UploadAck};
use duplex_shared::trace::child_traceparent;

use crate::call::{idempotency_key, Service};
use crate::Upstream;

impl Upstream {
    /// The broker's confirm is the ack; without one the client resends (same id, same key).
    pub(crate) async fn upload_to_sink(
        &self,
        service: &Service,
        sink: &ReconnectingSink,
        from: &ClientContext,
        up: Upload,
    ) -> Result<UploadAck, LinkError> {
        let upload_id = up.id.to_string();
        let key = idempotency_key(&from.client_id, "u", up.id);
        let traceparent = child_traceparent(up.headers.get("traceparent").map(String::as_str));
        let mut headers: Vec<(&str, &str)> = vec![
            ("x-duplex-client-id", &from.client_id),
            ("x-duplex-user-id", &from.user_id),
            ("x-duplex-upload-id", &upload_id),
            ("x-duplex-path", &up.path),
            ("idempotency-key", &key),
            ("traceparent", &traceparent),
        ];
        let passed: Vec<(String, &str)> = up
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
            .filter(|(k, _)| service.passes(k))
            .collect();
        headers.extend(passed.iter().map(|(k, v)| (k.as_str(), *v)));
        match sink.publish(up.body, &headers).await {
            Ok(()) => {
                self.metrics.inc(
                    "duplex_uploads_published_total",
                    &[("service", &service.name), ("outcome", "confirmed")],
                );
                Ok(UploadAck {
                    id: up.id,
                    status: 202,
                    spooled: false,
                })
            }
            Err(e) => {
                self.metrics.inc(
                    "duplex_uploads_published_total",
                    &[("service", &service.name), ("outcome", "failed")],
                );
                tracing::warn!(service = %service.name, error = %e, "upload not confirmed by the queue");
                Err(LinkError::Unavailable(format!(
                    "the queue of service {:?} did not confirm the upload; resend later",
                    service.name
                )))
            }
        }
    }
}
