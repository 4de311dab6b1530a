//! Store settings, validated when the store is built.

use std::time::Duration;

use outbox_core::{Error, Result, Retention};

/// Table name used when none is configured.
pub const DEFAULT_TABLE: &str = "outbox_messages";

/// Longest table name accepted: index names add up to 15 bytes, and Postgres truncates
/// identifiers at 63 bytes (MySQL rejects names over 64).
pub const MAX_TABLE_LEN: usize = 48;

/// Key partitions when none are configured ([`SqlStoreConfig::key_partitions`]).
pub const DEFAULT_KEY_PARTITIONS: u16 = 256;

/// Most key partitions accepted.
pub const MAX_KEY_PARTITIONS: u16 = 4096;

/// Partition lease TTL when none is configured ([`SqlStoreConfig::partition_lease_ttl`]).
pub const DEFAULT_PARTITION_LEASE_TTL: Duration = Duration::from_secs(10);

/// Longest Postgres `LISTEN`/`NOTIFY` channel name (Postgres identifiers are at most 63 bytes).
pub const MAX_CHANNEL_LEN: usize = 63;

/// Settings of a [`SqlStore`](crate::SqlStore).
///
/// ```
/// use outbox_core::Retention;
/// use outbox_sea_orm::SqlStoreConfig;
///
/// let config = SqlStoreConfig::default()
///     .table("orders_outbox")
///     .retention(Retention::KeepPublished)
///     .notify_channel("orders_outbox");
/// config.validate().unwrap();
///
/// let err = SqlStoreConfig::default().table("orders; DROP TABLE x").validate().unwrap_err();
/// assert!(err.to_string().contains("`store.table`"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SqlStoreConfig {
    /// The outbox table. Default [`DEFAULT_TABLE`] (`outbox_messages`). A plain identifier:
    /// ASCII letters, digits and `_`, not starting with a digit, 1 to [`MAX_TABLE_LEN`] bytes.
    pub table: String,
    /// What completing a message does with its row. Default [`Retention::Delete`].
    pub retention: Retention,
    /// Postgres only: the channel that enqueue notifies (`pg_notify`) inside the writer's
    /// transaction, for a [`PgNotifier`](crate::PgNotifier) listening on it. Default `None`
    /// (no notification). Same identifier rules as the table, up to [`MAX_CHANNEL_LEN`] bytes.
    pub notify_channel: Option<String>,
    /// How a claim holds its rows until they are completed or failed. Default
    /// [`ClaimMode::Auto`].
    pub claim_mode: ClaimMode,
    /// How many partitions keyed messages are hashed into (stored with each row at enqueue).
    /// Relays share the partitions through leases, and each claims keyed messages only from
    /// the partitions it holds, so racing relays never contend for a key. Default
    /// [`DEFAULT_KEY_PARTITIONS`] (256), at most [`MAX_KEY_PARTITIONS`]; more partitions
    /// spread keys more evenly over more relays. `0` turns partitioning off: keyed messages
    /// are then claimed by any relay through a head-of-key check per row, which is slower
    /// with many keys and several relays. Every writer and relay of a table must use the
    /// same value; change it only while the outbox is empty (a key would move partitions).
    pub key_partitions: u16,
    /// How long a relay's hold on its partitions lasts without renewal (renewed by its claims
    /// every third of it). The partitions of a relay that dies move to the others within
    /// about 1⅓ of it; a relay that shuts down hands them over at once. Default
    /// [`DEFAULT_PARTITION_LEASE_TTL`] (10 s), at least 1 s. Keep the fallback interval
    /// below a third of it, or holds lapse between sweeps.
    pub partition_lease_ttl: Duration,
}

/// How a claim keeps other relays off its rows while they are being published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClaimMode {
    /// [`ClaimMode::Transaction`] on Postgres, [`ClaimMode::Lease`] elsewhere.
    #[default]
    Auto,
    /// The claim writes a lease (`claimed_until`, `claim_token`) on each row; it survives the
    /// connection and expires after the relay's claim TTL. Every backend.
    Lease,
    /// Postgres only: the claim is `SELECT … FOR UPDATE SKIP LOCKED` in a transaction that
    /// stays open until `complete`/`fail` commits it, so claiming writes nothing. A relay
    /// that dies releases its rows with its connection; a stalled one is cut off by
    /// `idle_in_transaction_session_timeout`, set to the claim TTL. Each claim in flight
    /// holds a pooled connection: at most half the pool, shared by every store on it; further
    /// claims take a lease. So do claims by id of fewer than 32 messages (the listener at low
    /// rates, where no kept transaction is usually waiting: a lease needs no `BEGIN`) and
    /// sweeps while they find nothing (one statement when idle). A pool of one connection is
    /// refused. A lost connection (a restart, a failover, a script that kills idle
    /// transactions) frees the claim's rows at once, possibly mid-publish: see "Held claims"
    /// in the operations guide (`docs/operations.md`).
    Transaction,
}

impl Default for SqlStoreConfig {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            retention: Retention::Delete,
            notify_channel: None,
            claim_mode: ClaimMode::Auto,
            key_partitions: DEFAULT_KEY_PARTITIONS,
            partition_lease_ttl: DEFAULT_PARTITION_LEASE_TTL,
        }
    }
}

impl SqlStoreConfig {
    /// Sets [`SqlStoreConfig::table`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets [`SqlStoreConfig::retention`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`SqlStoreConfig::notify_channel`].
    pub fn notify_channel(mut self, channel: impl Into<String>) -> Self {
        self.notify_channel = Some(channel.into());
        self
    }

    /// Sets [`SqlStoreConfig::claim_mode`].
    pub fn claim_mode(mut self, mode: ClaimMode) -> Self {
        self.claim_mode = mode;
        self
    }

    /// Sets [`SqlStoreConfig::key_partitions`] (`0`: off).
    pub fn key_partitions(mut self, partitions: u16) -> Self {
        self.key_partitions = partitions;
        self
    }

    /// Sets [`SqlStoreConfig::partition_lease_ttl`].
    pub fn partition_lease_ttl(mut self, ttl: Duration) -> Self {
        self.partition_lease_ttl = ttl;
        self
    }

    /// Checks every field; the error names the bad one and what is allowed.
    pub fn validate(&self) -> Result<()> {
        check_identifier("store.table", &self.table, MAX_TABLE_LEN)?;
        if self.key_partitions > MAX_KEY_PARTITIONS {
            return Err(Error::config(
                "store.key_partitions",
                format!("must be at most {MAX_KEY_PARTITIONS} (0 turns partitioning off), got {}", self.key_partitions),
            ));
        }
        if self.partition_lease_ttl < Duration::from_secs(1) {
            return Err(Error::config(
                "store.partition_lease_ttl",
                format!("must be at least 1s, got {:?}", self.partition_lease_ttl),
            ));
        }
        if let Some(channel) = &self.notify_channel {
            check_identifier("store.notify_channel", channel, MAX_CHANNEL_LEN)?;
        }
        Ok(())
    }
}

/// Table and channel names are spliced into SQL, so only plain identifiers are accepted.
pub(crate) fn check_identifier(field: &'static str, name: &str, max_len: usize) -> Result<()> {
    let plain =
        name.bytes().enumerate().all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if name.is_empty() || name.len() > max_len || !plain {
        return Err(Error::config(
            field,
            format!(
                "must be a plain identifier (ASCII letters, digits and `_`, not starting with a digit, \
                 1 to {max_len} bytes), got {name:?}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = SqlStoreConfig::default();
        assert_eq!(c.table, "outbox_messages");
        assert_eq!(c.retention, Retention::Delete);
        assert_eq!(c.notify_channel, None);
        assert_eq!(c.key_partitions, DEFAULT_KEY_PARTITIONS);
        c.validate().unwrap();
    }

    #[test]
    fn rejects_too_many_partitions_and_short_partition_leases() {
        let err = SqlStoreConfig::default().key_partitions(MAX_KEY_PARTITIONS + 1).validate().unwrap_err();
        assert!(err.to_string().contains("`store.key_partitions` must be at most 4096"), "{err}");
        let err = SqlStoreConfig::default().partition_lease_ttl(Duration::from_millis(999)).validate().unwrap_err();
        assert!(err.to_string().contains("`store.partition_lease_ttl` must be at least 1s"), "{err}");
        SqlStoreConfig::default().key_partitions(0).validate().unwrap();
    }

    #[test]
    fn rejects_names_that_are_not_plain_identifiers() {
        for bad in ["", "1table", "a-b", "a.b", "tab le", "t\"", &"x".repeat(MAX_TABLE_LEN + 1)] {
            let err = SqlStoreConfig::default().table(bad).validate().unwrap_err();
            assert!(err.to_string().contains("`store.table` must be a plain identifier"), "{bad:?}: {err}");
        }
        let err = SqlStoreConfig::default().notify_channel("a b").validate().unwrap_err();
        assert!(err.to_string().contains("`store.notify_channel`"));
        SqlStoreConfig::default().table("_Outbox_2").notify_channel("ch_1").validate().unwrap();
    }

    #[test]
    fn deserializes_with_defaults() {
        let c: SqlStoreConfig = serde_json::from_str(r#"{"retention":"keep_published"}"#).unwrap();
        assert_eq!(c.table, DEFAULT_TABLE);
        assert_eq!(c.retention, Retention::KeepPublished);
    }
}
