#![doc = include_str!("../README.md")]

mod bus;
mod config;
mod error;

pub use bus::{Context, KafkaBus, KafkaBusBuilder, Producer};
pub use config::{
    DEFAULT_DELIVERY_TIMEOUT, DEFAULT_ENQUEUE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, FIXED_OPTIONS, KafkaBusConfig,
    MAX_TOPIC_NAME_LEN, TopicMapping, invalid_topic, is_secret_option,
};
pub use error::{error_code, is_permanent};

/// The rdkafka crate this one is built on, re-exported so your code uses the same version.
pub use rdkafka;
