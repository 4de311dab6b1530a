//! The relay engines: the listener (woken by notices) and the fallback (sweeps on an
//! interval) share one batch pipeline: claim → publish → complete or fail.

mod batch;
mod fallback;
mod listener;
mod relay;

pub use batch::RelayStats;
pub use relay::{Relay, RelayBuilder, RelayHandle, RelayHealth};
