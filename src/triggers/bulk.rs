//! Dapr bulk subscribe: an app that sets `bulkSubscribe` on a topic subscription gets its
//! events in batches (gRPC `OnBulkTopicEventAlpha1` / `OnBulkTopicEvent`, HTTP POST of a
//! bulk envelope) and answers each entry on its own. Every event still settles alone
//! (retry, dead letter, commit), so a batch is only a way to carry events.
//!
//! Batching adapts to load: an event is sent at once when no batch is on its way to the
//! endpoint; otherwise it waits for that batch's answer, for `maxMessagesCount` others to
//! join, or for `maxAwaitDurationMs`, whichever comes first. At low rates that costs no
//! latency; at high rates batches fill up to the app's limit.

use super::contract::{Answer, BulkSubscribe};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Where the batcher sends a batch: one answer per entry, in the entries' order.
#[async_trait::async_trait]
pub trait BatchSink: Send + Sync + 'static {
    type Entry: Send + 'static;
    async fn send(&self, entries: Vec<Self::Entry>) -> Vec<Answer>;
}

struct Waiting<E> {
    entry: E,
    answer: oneshot::Sender<Answer>,
}

struct State<E> {
    queued: Vec<Waiting<E>>,
    /// Batches on their way to the app.
    sending: usize,
    /// A `maxAwaitDurationMs` timer runs for what is queued.
    timer: bool,
}

impl<E> Default for State<E> {
    fn default() -> Self {
        State {
            queued: Vec::new(),
            sending: 0,
            timer: false,
        }
    }
}

impl<E> State<E> {
    /// The next batch, counted as on its way.
    fn start_batch(&mut self, max: usize) -> Vec<Waiting<E>> {
        self.sending += 1;
        let n = self.queued.len().min(max);
        self.queued.drain(..n).collect()
    }
}

/// Collects one endpoint's events for one route into batches.
pub struct Batcher<S: BatchSink> {
    target: S,
    limits: BulkSubscribe,
    state: Mutex<State<S::Entry>>,
}

impl<S: BatchSink> Batcher<S> {
    pub fn new(target: S, limits: BulkSubscribe) -> Batcher<S> {
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
    pub async fn deliver(self: &Arc<Self>, entry: S::Entry) -> Answer {
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
    async fn send_until_drained(&self, mut batch: Vec<Waiting<S::Entry>>) {
        loop {
            let (entries, answers): (Vec<S::Entry>, Vec<oneshot::Sender<Answer>>) =
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
