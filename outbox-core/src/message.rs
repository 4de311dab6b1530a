//! The message model: what a writer enqueues and what a relay publishes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};

/// String headers carried to the broker with a message.
pub type Headers = BTreeMap<String, String>;

/// Header that carries the outbox message id to the broker (also usable as a dedup id).
pub const HEADER_MESSAGE_ID: &str = "Outbox-Message-Id";
/// Header that carries the message key (ordering / partition key) to the broker.
pub const HEADER_KEY: &str = "Outbox-Key";
/// Header that carries the outbox topic to the broker.
pub const HEADER_TOPIC: &str = "Outbox-Topic";
/// W3C trace context header, copied from the writer when present.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Header that names the payload encoding, e.g. `application/json`.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";

/// Header names a bus sets itself: a user header of the same name (in any case) would
/// overwrite the real id, key or dedup id, so enqueue rejects it.
pub const RESERVED_HEADERS: &[&str] = &[HEADER_MESSAGE_ID, HEADER_KEY, HEADER_TOPIC, "Nats-Msg-Id"];

/// Longest topic, in bytes, that every store accepts.
pub const MAX_TOPIC_LEN: usize = 255;
/// Longest key, in bytes, that every store accepts.
pub const MAX_KEY_LEN: usize = 255;

/// Globally unique message id: a UUIDv7, so ids sort by creation time and double as broker dedup ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for MessageId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

/// Milliseconds since the Unix epoch; every store keeps times in this unit so queries stay portable.
pub type UnixMillis = i64;

/// The current wall-clock time in [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A [`Duration`] as whole milliseconds, saturating.
pub fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A message about to be written to the outbox, inside the caller's transaction.
///
/// ```
/// use outbox_core::NewMessage;
///
/// let msg = NewMessage::new("users.registered", br#"{"id":7}"#.to_vec())
///     .key("user-7")
///     .header("tenant", "acme");
/// assert_eq!(msg.topic, "users.registered");
/// assert_eq!(msg.key.as_deref(), Some("user-7"));
/// msg.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Made here, before commit, so the writer can log it and the broker can dedup on it.
    pub id: MessageId,
    /// Destination; a bus maps it to a subject or stream.
    pub topic: String,
    /// Ordering key: messages with the same key are published in enqueue order.
    pub key: Option<String>,
    /// Opaque payload bytes.
    pub payload: Vec<u8>,
    /// Extra headers, carried to the broker.
    pub headers: Headers,
}

impl NewMessage {
    /// A message for `topic` with a fresh UUIDv7 id. With the `otel` feature, the current
    /// span's trace context is copied into a `traceparent` header so consumers can link traces.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        let msg = Self {
            id: MessageId::new(),
            topic: topic.into(),
            key: None,
            payload: payload.into(),
            headers: Headers::new(),
        };
        #[cfg(feature = "otel")]
        let msg = msg.with_current_trace();
        msg
    }

    /// Copies the current span's W3C trace context into a `traceparent` header; unchanged when
    /// there is no valid OpenTelemetry context.
    #[cfg(feature = "otel")]
    pub fn with_current_trace(mut self) -> Self {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            let value = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
            self.headers.insert(HEADER_TRACEPARENT.to_owned(), value);
        }
        self
    }

    /// A message whose payload is `value` encoded with `codec`.
    pub fn encode<T: Serialize + ?Sized, C: Codec>(topic: impl Into<String>, value: &T, codec: &C) -> Result<Self> {
        let payload = codec.encode(value)?;
        Ok(Self::new(topic, payload).header(HEADER_CONTENT_TYPE, codec.content_type()))
    }

    /// A message whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        Self::encode(topic, value, &JsonCodec)
    }

    /// A message for a typed [`OutboxEvent`]: its topic, key and JSON payload.
    pub fn from_event<E: OutboxEvent>(event: &E) -> Result<Self> {
        let msg = Self::json(event.topic(), event)?;
        Ok(match event.key() {
            Some(key) => msg.key(key),
            None => msg,
        })
    }

    /// Sets the ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Overrides the generated id (e.g. to derive it from a business id).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// Checks the limits every store shares: a non-empty topic, topic/key lengths, and no
    /// header named like one the bus sets ([`RESERVED_HEADERS`]).
    pub fn validate(&self) -> Result<()> {
        if let Some(name) =
            self.headers.keys().find(|name| RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)))
        {
            return Err(Error::invalid_message(
                self.id,
                format!("header `{name}` is reserved: the bus sets it (use the message id, key and topic instead)"),
            ));
        }
        if self.topic.is_empty() {
            return Err(Error::invalid_message(self.id, "topic is empty"));
        }
        if self.topic.len() > MAX_TOPIC_LEN {
            return Err(Error::invalid_message(
                self.id,
                format!("topic is {} bytes, the limit is {MAX_TOPIC_LEN}", self.topic.len()),
            ));
        }
        if let Some(key) = &self.key
            && key.len() > MAX_KEY_LEN
        {
            return Err(Error::invalid_message(
                self.id,
                format!("key is {} bytes, the limit is {MAX_KEY_LEN}", key.len()),
            ));
        }
        Ok(())
    }
}

/// A stored message, as a relay claims and publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Id made at enqueue.
    pub id: MessageId,
    /// Destination.
    pub topic: String,
    /// Ordering key.
    pub key: Option<String>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers given at enqueue.
    pub headers: Headers,
    /// When it was enqueued.
    pub created_at: UnixMillis,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The last publish error, if any.
    pub last_error: Option<String>,
}

impl OutboxMessage {
    /// Builds the stored form of a new message, as an in-memory store or a test does.
    pub fn from_new(msg: NewMessage, created_at: UnixMillis) -> Self {
        Self {
            id: msg.id,
            topic: msg.topic,
            key: msg.key,
            payload: msg.payload,
            headers: msg.headers,
            created_at,
            attempts: 0,
            last_error: None,
        }
    }

    /// Headers to send to the broker: the message's own, plus its id, topic and key.
    pub fn broker_headers(&self) -> impl Iterator<Item = (&str, std::borrow::Cow<'_, str>)> {
        let id = std::iter::once((HEADER_MESSAGE_ID, self.id.to_string().into()));
        let topic = std::iter::once((HEADER_TOPIC, self.topic.as_str().into()));
        let key = self.key.as_deref().map(|k| (HEADER_KEY, k.into()));
        id.chain(topic).chain(key).chain(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str().into())))
    }
}

/// Turns a typed value into payload bytes.
pub trait Codec {
    /// The `Content-Type` header value for this encoding.
    fn content_type(&self) -> &'static str;
    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>>;
}

/// JSON encoding through `serde_json`, the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn content_type(&self) -> &'static str {
        "application/json"
    }
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::encode(format!("JSON: {e}"), Some(e.into())))
    }
}

/// A domain event that knows its topic and ordering key.
///
/// ```
/// use outbox_core::{NewMessage, OutboxEvent};
///
/// #[derive(serde::Serialize)]
/// struct UserRegistered { user_id: u64, email: String }
///
/// impl OutboxEvent for UserRegistered {
///     fn topic(&self) -> &str { "users.registered" }
///     fn key(&self) -> Option<String> { Some(self.user_id.to_string()) }
/// }
///
/// let msg = NewMessage::from_event(&UserRegistered { user_id: 1, email: "a@b.c".into() }).unwrap();
/// assert_eq!(msg.key.as_deref(), Some("1"));
/// assert_eq!(msg.headers["Content-Type"], "application/json");
/// ```
pub trait OutboxEvent: Serialize {
    /// Destination topic.
    fn topic(&self) -> &str;
    /// Ordering key; `None` means no order promise.
    fn key(&self) -> Option<String> {
        None
    }
}
