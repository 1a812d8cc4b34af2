//! Dapr bulk subscribe: an app that sets `bulkSubscribe` on a topic subscription gets its
//! events in batches (gRPC `OnBulkTopicEventAlpha1` / `OnBulkTopicEvent`, HTTP POST of a
//! bulk envelope) and answers each entry on its own. Every event still settles alone
//! (retry, dead letter, commit), so a batch is only a way to carry events.
//!
//! Batching adapts to load: an event is sent at once when no batch is on its way to the
//! endpoint; otherwise it waits for that batch's answer, for `maxMessagesCount` others to
//! join, or for `maxAwaitDurationMs`, whichever comes first. At low rates that costs no
//! latency; at high rates batches fill up to the app's limit.

use super::app::{Answer, BulkSubscribe, BulkTarget};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One event as a bulk entry of the app's protocol.
pub enum Entry {
    Grpc(super::dapr_grpc::GrpcBulkEntry),
    Http(super::dapr_http::HttpBulkEntry),
}

impl Entry {
    pub fn into_grpc(self) -> Option<super::dapr_grpc::GrpcBulkEntry> {
        match self {
            Entry::Grpc(e) => Some(e),
            Entry::Http(_) => None,
        }
    }

    pub fn into_http(self) -> Option<super::dapr_http::HttpBulkEntry> {
        match self {
            Entry::Http(e) => Some(e),
            Entry::Grpc(_) => None,
        }
    }
}

/// The event type Dapr gives a bulk envelope.
pub const BULK_EVENT_TYPE: &str = "com.dapr.event.sent.bulk";

struct Waiting {
    entry: Entry,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    queued: Vec<Waiting>,
    /// Batches on their way to the app.
    sending: usize,
    /// A `maxAwaitDurationMs` timer runs for what is queued.
    timer: bool,
}

impl State {
    /// The next batch, counted as on its way.
    fn start_batch(&mut self, max: usize) -> Vec<Waiting> {
        self.sending += 1;
        let n = self.queued.len().min(max);
        self.queued.drain(..n).collect()
    }
}

/// Collects one endpoint's events for one route into batches.
pub struct Batcher {
    target: BulkTarget,
    limits: BulkSubscribe,
    state: Mutex<State>,
}

impl Batcher {
    pub fn new(target: BulkTarget, limits: BulkSubscribe) -> Batcher {
        Batcher {
            target,
            limits,
            state: Mutex::new(State::default()),
        }
    }

    pub fn limits(&self) -> BulkSubscribe {
        self.limits
    }

    /// Queues one entry and waits for the app's answer to it.
    pub async fn deliver(self: &Arc<Self>, entry: Entry) -> Answer {
        let (answer, answered) = oneshot::channel();
        let ready = {
            let mut st = self.state.lock().expect("not poisoned");
            st.queued.push(Waiting { entry, answer });
            if st.sending == 0 || st.queued.len() >= self.limits.max_messages {
                Some(st.start_batch(self.limits.max_messages))
            } else {
                if !st.timer {
                    st.timer = true;
                    let me = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(me.limits.max_await).await;
                        let batch = {
                            let mut st = me.state.lock().expect("not poisoned");
                            st.timer = false;
                            (!st.queued.is_empty()).then(|| st.start_batch(me.limits.max_messages))
                        };
                        if let Some(batch) = batch {
                            me.send_until_drained(batch).await;
                        }
                    });
                }
                None
            }
        };
        if let Some(batch) = ready {
            // Its own task: the batch must not depend on the caller staying around.
            let me = self.clone();
            tokio::spawn(async move { me.send_until_drained(batch).await });
        }
        answered
            .await
            .unwrap_or_else(|_| Answer::Unreachable("the batch was abandoned".into()))
    }

    /// Sends `batch`, hands out the answers, then sends what queued meanwhile.
    async fn send_until_drained(&self, mut batch: Vec<Waiting>) {
        loop {
            let (entries, answers): (Vec<Entry>, Vec<oneshot::Sender<Answer>>) =
                batch.into_iter().map(|w| (w.entry, w.answer)).unzip();
            let n = entries.len();
            let mut got = self.target.send(entries).await;
            got.resize_with(n, || Answer::Retry("no status for the entry".into()));
            for (tx, answer) in answers.into_iter().zip(got) {
                let _ = tx.send(answer);
            }
            let mut st = self.state.lock().expect("not poisoned");
            st.sending -= 1;
            if st.queued.is_empty() {
                return;
            }
            batch = st.start_batch(self.limits.max_messages);
        }
    }
}

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
