//! Inbox settings, validated when the inbox is built.

use outbox_core::{Error, Result};

use crate::config::{MAX_TABLE_LEN, check_identifier};

/// Table name used when none is configured.
pub const DEFAULT_INBOX_TABLE: &str = "outbox_inbox";

/// Consumer name used when none is configured.
pub const DEFAULT_CONSUMER: &str = "default";

/// Longest consumer name, in bytes.
pub const MAX_CONSUMER_LEN: usize = 128;

/// Longest message id the inbox records, in bytes.
pub const MAX_INBOX_ID_LEN: usize = 255;

/// Most deliveries one [`InboxHandler`](super::InboxHandler) transaction may hold.
pub const MAX_INBOX_BATCH: usize = 1_000;

/// Settings of an [`Inbox`](super::Inbox).
///
/// ```
/// use outbox_sea_orm::inbox::InboxConfig;
///
/// let config = InboxConfig::default().table("billing_inbox").consumer("billing");
/// config.validate().unwrap();
///
/// let err = InboxConfig::default().table("inbox; DROP TABLE x").validate().unwrap_err();
/// assert!(err.to_string().contains("`inbox.table`"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct InboxConfig {
    /// The inbox table. Default [`DEFAULT_INBOX_TABLE`] (`outbox_inbox`). A plain identifier:
    /// ASCII letters, digits and `_`, not starting with a digit, 1 to
    /// [`MAX_TABLE_LEN`](crate::MAX_TABLE_LEN) bytes.
    pub table: String,
    /// Who consumes: ids are recorded per consumer, so several consumers of one message (two
    /// services, two durable consumers) can share a table and each processes it once. Default
    /// [`DEFAULT_CONSUMER`]; 1 to [`MAX_CONSUMER_LEN`] bytes.
    pub consumer: String,
    /// Most deliveries an [`InboxHandler`](super::InboxHandler) puts in one transaction (those
    /// waiting when a transaction is free). Default 64; 1 gives each its own; at most
    /// [`MAX_INBOX_BATCH`].
    pub batch: usize,
    /// Most transactions an [`InboxHandler`](super::InboxHandler) has open at once, so
    /// connections of the pool it takes. Default 4.
    pub transactions: usize,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            table: DEFAULT_INBOX_TABLE.to_owned(),
            consumer: DEFAULT_CONSUMER.to_owned(),
            batch: 64,
            transactions: 4,
        }
    }
}

impl InboxConfig {
    /// Sets [`InboxConfig::table`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets [`InboxConfig::consumer`].
    pub fn consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = consumer.into();
        self
    }

    /// Sets [`InboxConfig::batch`].
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Sets [`InboxConfig::transactions`].
    pub fn transactions(mut self, n: usize) -> Self {
        self.transactions = n;
        self
    }

    /// Checks every field; the error names the bad one and what is allowed.
    pub fn validate(&self) -> Result<()> {
        check_identifier("inbox.table", &self.table, MAX_TABLE_LEN)?;
        if self.consumer.is_empty() || self.consumer.len() > MAX_CONSUMER_LEN {
            return Err(Error::config(
                "inbox.consumer",
                format!("must be 1 to {MAX_CONSUMER_LEN} bytes, got {}", self.consumer.len()),
            ));
        }
        if self.batch == 0 || self.batch > MAX_INBOX_BATCH {
            return Err(Error::config("inbox.batch", format!("must be 1 to {MAX_INBOX_BATCH}, got {}", self.batch)));
        }
        if self.transactions == 0 {
            return Err(Error::config("inbox.transactions", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        InboxConfig::default().validate().unwrap();
        for bad in ["", "1t", "a-b", "a b"] {
            let err = InboxConfig::default().table(bad).validate().unwrap_err();
            assert!(err.to_string().contains("`inbox.table` must be a plain identifier"), "{bad:?}: {err}");
        }
        let err = InboxConfig::default().consumer("").validate().unwrap_err();
        assert!(err.to_string().contains("`inbox.consumer`"));
        let err = InboxConfig::default().consumer("x".repeat(MAX_CONSUMER_LEN + 1)).validate().unwrap_err();
        assert!(err.to_string().contains("`inbox.consumer`"));
        for (config, field) in [
            (InboxConfig::default().batch(0), "`inbox.batch`"),
            (InboxConfig::default().batch(MAX_INBOX_BATCH + 1), "`inbox.batch`"),
            (InboxConfig::default().transactions(0), "`inbox.transactions`"),
        ] {
            assert!(config.validate().unwrap_err().to_string().contains(field), "{config:?}");
        }
    }
}
