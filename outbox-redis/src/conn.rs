//! The connection a bus runs on, a single node or a cluster, with every call bounded in time.

use std::future::Future;
use std::time::Duration;

use outbox_core::Result;
use redis::Value;
use redis::aio::ConnectionManager;

use crate::error::{map_err, timed_out};

#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    /// Runs `pipe` (keys of one slot on a cluster) with every server error kept per command.
    pub(crate) async fn pipeline(&self, pipe: &redis::Pipeline, within: Duration) -> Result<Vec<Value>> {
        let what = "Redis pipeline";
        match self.clone() {
            Conn::Single(mut c) => bounded(what, within, pipe.query_async(&mut c)).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(mut c) => bounded(what, within, pipe.query_async(&mut c)).await,
        }
    }

    /// Runs one command; unlike a pipeline, a node-wide command such as `SCRIPT LOAD` reaches
    /// every node of a cluster. `what` names it in an error.
    pub(crate) async fn command(&self, what: &str, cmd: &redis::Cmd, within: Duration) -> Result<Value> {
        match self.clone() {
            Conn::Single(mut c) => bounded(what, within, cmd.query_async(&mut c)).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(mut c) => bounded(what, within, cmd.query_async(&mut c)).await,
        }
    }
}

/// `query`, or a temporary error once `within` has passed.
async fn bounded<T>(what: &str, within: Duration, query: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
    tokio::time::timeout(within, query).await.map_err(|_| timed_out(what, within))?.map_err(|e| map_err(what, e))
}
