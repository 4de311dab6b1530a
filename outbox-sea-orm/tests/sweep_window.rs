//! Sweeps look at a window past the oldest pending row, and now and then at the whole
//! backlog, so rows parked behind a dead head cannot hide the rest of the table.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::Backend;
use outbox_core::{Disposition, Failure, Lease, NewMessage, OutboxStore};
use outbox_sea_orm::SqlStoreConfig;

const TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_beyond_a_window_of_parked_rows_are_still_swept() {
    let Some(store) = common::store(Backend::Postgres, SqlStoreConfig::default()).await else { return };
    // A dead head, then more same-key rows than a sweep window holds, then one free message.
    let head = store.enqueue(vec![NewMessage::new("window.t", "head").key("k")]).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&head, &lease).await.unwrap().len(), 1);
    let dead = Failure { id: head[0], error: "rejected".into(), disposition: Disposition::DeadLetter };
    store.fail(&[dead], &lease).await.unwrap();
    let parked: Vec<_> = (0..10_050).map(|i| NewMessage::new("window.t", i.to_string()).key("k")).collect();
    store.enqueue(parked).await.unwrap();
    let free = store.enqueue(vec![NewMessage::new("window.t", "free")]).await.unwrap();

    let lease = Lease::new(TTL);
    let claimed = store.claim_due(100, Duration::ZERO, &lease).await.unwrap();
    assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), free, "found past the parked rows");
    assert_eq!(store.complete(&free, &lease).await.unwrap(), 1);
    let again = store.claim_due(100, Duration::ZERO, &Lease::new(TTL)).await.unwrap();
    assert!(again.is_empty(), "the parked rows stay parked behind their dead head");
}
