//! Which librdkafka errors pass and which never will, judged by the error code of the delivery
//! report (or of the failed enqueue), never by its text.

use outbox_core::{Error, PublishOutcome};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// Codes that say the message itself, or its destination, is wrong: the same record to the
/// same topic will fail again until someone changes it (or the topic, or the ACLs).
const PERMANENT: &[Code] = &[
    // The record is larger than `message.max.bytes` (client) or the topic's
    // `max.message.bytes` (broker).
    Code::MessageSizeTooLarge,
    Code::InvalidMessageSize,
    // The topic does not exist and auto-creation is off (client or broker), or the name is
    // illegal.
    Code::UnknownTopic,
    Code::UnknownTopicOrPartition,
    Code::UnknownPartition,
    Code::InvalidTopic,
    // The broker refused the record: bad timestamp, headers or format, a policy, compression.
    Code::InvalidRecord,
    Code::InvalidTimestamp,
    Code::UnsupportedForMessageFormat,
    Code::PolicyViolation,
    Code::UnsupportedCompressionType,
    Code::InvalidRequiredAcks,
    Code::InvalidRequest,
    Code::BadMessage,
    Code::InvalidArgument,
    Code::KeySerialization,
    Code::ValueSerialization,
    // The principal may not write this topic, or may not use the idempotent producer.
    Code::TopicAuthorizationFailed,
    Code::ClusterAuthorizationFailed,
    // The broker lacks something the record needs (headers, idempotence).
    Code::UnsupportedVersion,
    Code::UnsupportedFeature,
];

/// Whether a librdkafka error code names a permanent failure (see [`PERMANENT`]). Everything
/// else is retryable: timeouts, a full queue, transport failures, leader changes, too few
/// in-sync replicas, throttling, a fenced or fatal idempotent producer (the bus starts a new
/// one), and codes this crate does not know (retried, so dead-lettered only once the relay's
/// `max_attempts` run out).
pub fn is_permanent(code: Code) -> bool {
    PERMANENT.contains(&code)
}

/// The librdkafka error code inside `e`, if it has one.
pub fn error_code(e: &KafkaError) -> Option<Code> {
    e.rdkafka_error_code()
}

/// The outcome of a message whose enqueue or delivery failed with `e`.
pub(crate) fn outcome(topic: &str, e: &KafkaError) -> PublishOutcome {
    match error_code(e) {
        Some(code) if is_permanent(code) => {
            PublishOutcome::Permanent(format!("Kafka rejected the record for topic `{topic}`: {e}"))
        }
        _ => PublishOutcome::Retryable(format!("Kafka did not take the record for topic `{topic}` for now: {e}")),
    }
}

/// Maps a client error met while building or checking the bus into the outbox error.
pub(crate) fn map_err(what: impl std::fmt::Display, e: KafkaError) -> Error {
    match &e {
        KafkaError::ClientConfig(..) => Error::config("kafka.options", format!("{what}: {e}")),
        _ if error_code(&e).is_some_and(is_permanent) => {
            Error::permanent("kafka", format!("{what}: {e}"), Some(Box::new(e) as _))
        }
        _ => Error::temporary("kafka", format!("{what}: {e}"), Some(Box::new(e) as _)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(code: Code) -> PublishOutcome {
        outcome("t", &KafkaError::MessageProduction(code))
    }

    #[test]
    fn weather_is_retryable() {
        for code in [
            Code::MessageTimedOut,
            Code::QueueFull,
            Code::BrokerTransportFailure,
            Code::AllBrokersDown,
            Code::Resolve,
            Code::RequestTimedOut,
            Code::LeaderNotAvailable,
            Code::NotLeaderForPartition,
            Code::BrokerNotAvailable,
            Code::NetworkException,
            Code::NotEnoughReplicas,
            Code::NotEnoughReplicasAfterAppend,
            Code::KafkaStorageError,
            Code::ThrottlingQuotaExceeded,
            Code::OutOfOrderSequenceNumber,
            Code::UnknownProducerId,
            Code::InvalidProducerEpoch,
            Code::ProducerFenced,
            Code::Fatal,
            Code::PurgeQueue,
            Code::PurgeInflight,
            Code::InvalidMessage,
            Code::Authentication,
        ] {
            assert!(matches!(produce(code), PublishOutcome::Retryable(r) if r.contains("`t`")), "{code:?}");
        }
        assert!(matches!(outcome("t", &KafkaError::Canceled), PublishOutcome::Retryable(_)));
    }

    #[test]
    fn a_wrong_record_or_destination_is_permanent() {
        for &code in PERMANENT {
            assert!(matches!(produce(code), PublishOutcome::Permanent(r) if r.contains("`t`")), "{code:?}");
        }
    }
}
