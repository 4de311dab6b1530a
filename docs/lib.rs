//! The outbox guide, as a crate so that every Rust code block in it is compiled and run as a
//! doc test (`cargo test -p outbox-docs`).

#[doc = include_str!("../README.md")]
pub mod readme {}
#[doc = include_str!("getting-started.md")]
pub mod getting_started {}
#[doc = include_str!("architecture.md")]
pub mod architecture {}
#[doc = include_str!("guarantees.md")]
pub mod guarantees {}
#[doc = include_str!("configuration.md")]
pub mod configuration {}
#[doc = include_str!("operations.md")]
pub mod operations {}
#[doc = include_str!("custom-bus.md")]
pub mod custom_bus {}
#[doc = include_str!("benchmarks.md")]
pub mod benchmarks {}
#[doc = include_str!("reliability.md")]
pub mod reliability {}
#[doc = include_str!("cli.md")]
pub mod cli {}
#[doc = include_str!("consumers.md")]
pub mod consumers {}
