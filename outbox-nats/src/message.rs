//! How an outbox message becomes a NATS message, for both buses: its subject, its headers and
//! the size check.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName};
use outbox_core::{Error, OutboxMessage, Result};

use crate::config::{SubjectMapping, invalid_subject};

/// The header JetStream deduplicates on.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// NATS headers for `msg`: its id, topic, key and own headers. A header NATS cannot carry is an
/// [`Error::InvalidMessage`]; the buses report it as a permanent failure (it would never go
/// through).
pub fn nats_headers(msg: &OutboxMessage) -> Result<HeaderMap> {
    headers_or_reason(msg).map_err(|reason| Error::invalid_message(msg.id, reason))
}

fn headers_or_reason(msg: &OutboxMessage) -> std::result::Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in msg.broker_headers() {
        let header = HeaderName::from_str(name).map_err(|_| format!("header name `{name}` is not valid in NATS"))?;
        if value.contains(['\r', '\n']) {
            return Err(format!("header `{name}` has a line break, which NATS cannot carry"));
        }
        headers.insert(header, value.as_ref());
    }
    Ok(headers)
}

/// The subject and headers for `msg`, or why it can never be published.
pub(crate) fn prepare(
    subjects: &SubjectMapping,
    msg: &OutboxMessage,
) -> std::result::Result<(String, HeaderMap), String> {
    let subject = subjects.subject(msg);
    if let Some(reason) = invalid_subject(&subject) {
        return Err(reason);
    }
    Ok((subject, headers_or_reason(msg)?))
}

/// Why the message can never fit the server's `max_payload`, if it cannot. NATS counts the
/// headers too, so a payload just under the limit can still be refused.
pub(crate) fn oversized(client: &async_nats::Client, headers: &HeaderMap, payload: &[u8]) -> Option<String> {
    let max_payload = client.max_payload();
    let header_bytes = headers_wire_len(headers);
    let size = payload.len() + header_bytes;
    (size > max_payload).then(|| {
        format!(
            "message of {size} bytes (payload {} + headers {header_bytes}) is over the server's max_payload size limit of {max_payload} bytes",
            payload.len()
        )
    })
}

/// Bytes of the `NATS/1.0` header block as sent on the wire.
fn headers_wire_len(headers: &HeaderMap) -> usize {
    const PREAMBLE: usize = "NATS/1.0\r\n".len() + "\r\n".len();
    let fields: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| name.len() + ": ".len() + v.as_str().len() + "\r\n".len())
        })
        .sum();
    PREAMBLE + fields
}
