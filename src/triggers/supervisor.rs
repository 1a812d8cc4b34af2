//! Follows the plan's `TriggerSet`: on every new revision, diffs it against what runs and
//! starts, restarts or stops only the triggers that changed. A restarted trigger's old
//! consumer finishes (settles or releases its in-flight events, commits) before the new
//! one starts.

use super::delivery::TriggerRuntime;
use super::{cron, jetstream, kafka, mqtt};
use crate::activator::Activator;
use crate::plan::{SourceSpec, TriggerKey, TriggerSet, TriggerSpec};
use crate::plan_swap::SharedPlan;
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

struct Running {
    spec: Arc<TriggerSpec>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct TriggerSupervisor {
    plan: SharedPlan,
    revisions: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    activator: Arc<Activator>,
    /// Whether this replica fires cron triggers (it holds the cron Lease, or reads files).
    cron_leader: watch::Receiver<bool>,
    running: HashMap<TriggerKey, Running>,
    /// `dapr.io/app-max-concurrency` slots per function and limit, shared by its triggers;
    /// a changed limit gets new slots (what is in flight on the old ones finishes).
    app_slots: HashMap<(String, String, u32), Weak<Semaphore>>,
}

impl TriggerSupervisor {
    pub fn new(
        plan: SharedPlan,
        revisions: watch::Receiver<u64>,
        metrics: Arc<Metrics>,
        activator: Arc<Activator>,
        cron_leader: watch::Receiver<bool>,
    ) -> Self {
        TriggerSupervisor {
            plan,
            revisions,
            metrics,
            activator,
            cron_leader,
            running: HashMap::new(),
            app_slots: HashMap::new(),
        }
    }

    /// The function's shared slots when it limits its concurrency.
    fn app_slots(&mut self, key: &TriggerKey, spec: &TriggerSpec) -> Option<Arc<Semaphore>> {
        let limit = spec.policy.app_max_concurrency?;
        self.app_slots.retain(|_, s| s.strong_count() > 0);
        let id = (key.namespace.clone(), key.function.clone(), limit);
        if let Some(slots) = self.app_slots.get(&id).and_then(Weak::upgrade) {
            return Some(slots);
        }
        let slots = Arc::new(Semaphore::new(limit as usize));
        self.app_slots.insert(id, Arc::downgrade(&slots));
        Some(slots)
    }

    /// Runs until `shutdown` resolves; then stops every trigger and waits for them.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let current = self.plan.load_full();
            self.apply(&current.triggers);
            tokio::select! {
                changed = self.revisions.changed() => if changed.is_err() { break },
                _ = &mut shutdown => break,
            }
        }
        let stopping: Vec<_> = self.running.drain().map(|(_, r)| r).collect();
        for r in &stopping {
            let _ = r.stop.send(true);
        }
        for r in stopping {
            let _ = r.task.await;
        }
    }

    fn apply(&mut self, next: &TriggerSet) {
        let current = TriggerSet {
            triggers: self
                .running
                .iter()
                .map(|(k, r)| (k.clone(), r.spec.clone()))
                .collect(),
        };
        let diff = current.diff(next);
        for key in &diff.remove {
            if let Some(old) = self.running.remove(key) {
                tracing::info!(trigger = %key, "trigger removed; stopping its consumer");
                let _ = old.stop.send(true);
            }
        }
        for key in diff.change.iter().chain(&diff.add) {
            let spec = next.triggers[key].clone();
            let previous = self.running.remove(key);
            if previous.is_some() {
                tracing::info!(trigger = %key, "trigger changed; restarting its consumer");
            } else {
                tracing::info!(trigger = %key, "trigger added; starting its consumer");
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            let rt = Arc::new(
                TriggerRuntime::new(
                    key.clone(),
                    spec.clone(),
                    self.plan.clone(),
                    self.revisions.clone(),
                    stop_rx,
                    self.metrics.clone(),
                    self.activator.clone(),
                )
                .with_app_slots(self.app_slots(key, &spec)),
            );
            let cron_leader = self.cron_leader.clone();
            let task = tokio::spawn(async move {
                if let Some(old) = previous {
                    let _ = old.stop.send(true);
                    let _ = old.task.await;
                }
                match rt.spec.source.clone() {
                    SourceSpec::Kafka(k) => kafka::run(rt, k).await,
                    SourceSpec::Jetstream(j) => jetstream::run(rt, j).await,
                    SourceSpec::Cron(c) => cron::run(rt, c, cron_leader).await,
                    SourceSpec::Mqtt(m) => mqtt::run(rt, m).await,
                }
            });
            self.running.insert(
                key.clone(),
                Running {
                    spec,
                    stop: stop_tx,
                    task,
                },
            );
        }
    }
}
