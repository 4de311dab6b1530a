//! A message as a consumer receives it.

use crate::message::{HEADER_KEY, HEADER_MESSAGE_ID, HEADER_TOPIC, HEADER_TRACEPARENT};

/// One delivery of a message, broker-neutral.
///
/// ```
/// use outbox_core::consumer::Delivery;
///
/// let d = Delivery::new("orders.7", "stream-seq-1", br#"{"id":7}"#.to_vec())
///     .with_header("Outbox-Message-Id", "0190c1a4-0000-7000-8000-000000000001")
///     .with_header("Outbox-Key", "7");
/// assert_eq!(d.id, "0190c1a4-0000-7000-8000-000000000001");
/// assert_eq!(d.key(), Some("7"));
/// assert_eq!(d.attempt, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The id the inbox records: the `Outbox-Message-Id` header, or the broker's own id of the
    /// message (JetStream: `<stream>:<sequence>`, Redis: the entry id) when it has none. It is
    /// the same on every redelivery.
    pub id: String,
    /// The subject or stream the message came from.
    pub subject: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// Every header, in the order the broker gave them.
    pub headers: Vec<(String, String)>,
    /// Which delivery this is: 1 the first time, 2 on the first redelivery, and so on.
    pub attempt: u64,
}

impl Delivery {
    /// A first delivery of `payload` from `subject`, identified by `fallback_id` until an
    /// `Outbox-Message-Id` header is added.
    pub fn new(subject: impl Into<String>, fallback_id: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { id: fallback_id.into(), subject: subject.into(), payload, headers: Vec::new(), attempt: 1 }
    }

    /// Adds a header; an `Outbox-Message-Id` header also becomes the [`id`](Self::id).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        if name.eq_ignore_ascii_case(HEADER_MESSAGE_ID) {
            self.id.clone_from(&value);
        }
        self.headers.push((name, value));
        self
    }

    /// Sets [`attempt`](Self::attempt).
    pub fn with_attempt(mut self, attempt: u64) -> Self {
        self.attempt = attempt;
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The ordering key (`Outbox-Key`), if the producer set one.
    pub fn key(&self) -> Option<&str> {
        self.header(HEADER_KEY)
    }

    /// The producer's topic (`Outbox-Topic`), if present.
    pub fn topic(&self) -> Option<&str> {
        self.header(HEADER_TOPIC)
    }

    /// The producer's W3C trace context (`traceparent`), if present.
    pub fn traceparent(&self) -> Option<&str> {
        self.header(HEADER_TRACEPARENT)
    }
}
