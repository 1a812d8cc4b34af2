//! What every delivery protocol shares: the app's answer to an event, what it subscribed
//! to, and where a bulk batch goes. The protocol modules (`dapr_grpc`, `dapr_http`) and the
//! batcher depend on this alone; `app` is the one place that knows both protocols.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

/// The app's answer to one delivery attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Success,
    Retry(String),
    /// Acknowledge and dead-letter (DROP, gRPC UNIMPLEMENTED, HTTP 404).
    Drop(String),
    /// The app could not be reached (refused, reset, gRPC UNAVAILABLE): retried, never
    /// dead-lettered, since the event was not judged.
    Unreachable(String),
}

impl Answer {
    /// Why a delivery did not succeed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Answer::Success => None,
            Answer::Retry(r) | Answer::Drop(r) | Answer::Unreachable(r) => Some(r),
        }
    }
}

/// What an endpoint told us it consumes.
#[derive(Clone, Debug, Default)]
pub struct Subscriptions {
    pub bindings: HashSet<String>,
    /// (pubsub name, topic) -> where its events go.
    pub topics: HashMap<(String, String), TopicRoute>,
}

/// One topic subscription: the route path (`""` when the app gave none) and, when the app
/// opted in to Dapr's bulk subscribe, its batch limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicRoute {
    pub path: String,
    pub bulk: Option<BulkSubscribe>,
}

/// An app's `bulkSubscribe` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BulkSubscribe {
    pub max_messages: usize,
    pub max_await: Duration,
}

impl BulkSubscribe {
    /// Dapr's defaults (100 messages, 1 s) for what the app leaves at 0.
    pub fn new(max_messages: i64, max_await_ms: i64) -> BulkSubscribe {
        BulkSubscribe {
            max_messages: if max_messages > 0 {
                max_messages as usize
            } else {
                100
            },
            max_await: Duration::from_millis(if max_await_ms > 0 {
                max_await_ms as u64
            } else {
                1000
            }),
        }
    }
}

/// Where one bulk batch goes: an endpoint, the app's route, the topic and its pub/sub.
pub struct BulkDestination {
    pub addr: SocketAddr,
    pub path: String,
    pub topic: String,
    /// The pub/sub component's name.
    pub component: String,
}

/// The event type Dapr gives a bulk envelope.
pub const BULK_EVENT_TYPE: &str = "com.dapr.event.sent.bulk";

/// The answers to a batch in its entries' order, from the app's per-entry statuses; an
/// entry the app did not answer is retried, as Dapr does.
pub fn answers_in_order<'a>(
    entry_ids: impl IntoIterator<Item = &'a str>,
    statuses: impl IntoIterator<Item = (String, Answer)>,
) -> Vec<Answer> {
    let by_id: HashMap<String, Answer> = statuses.into_iter().collect();
    entry_ids
        .into_iter()
        .map(|id| {
            by_id
                .get(id)
                .cloned()
                .unwrap_or_else(|| Answer::Retry(format!("the app gave no status for entry {id}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entry_gets_its_own_answer_and_one_the_app_did_not_answer_is_retried() {
        let answers = answers_in_order(
            ["a", "b", "c"],
            [
                ("c".to_owned(), Answer::Drop("DROP".into())),
                ("a".to_owned(), Answer::Success),
                ("zz".to_owned(), Answer::Success),
            ],
        );
        assert_eq!(answers[0], Answer::Success);
        assert!(matches!(answers[1], Answer::Retry(_)), "no status for b");
        assert_eq!(answers[2], Answer::Drop("DROP".into()));
    }

    #[test]
    fn limits_the_app_leaves_at_zero_take_daprs_defaults() {
        let b = BulkSubscribe::new(0, 0);
        assert_eq!(b.max_messages, 100);
        assert_eq!(b.max_await, std::time::Duration::from_secs(1));
        assert_eq!(BulkSubscribe::new(7, 40).max_messages, 7);
    }
}
