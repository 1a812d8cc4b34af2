//! The compile loop: catalog signals are drained, the snapshot compiled, and the new plan
//! swapped in atomically. N signals in a burst cost one compile; a snapshot whose object
//! versions did not change costs none.

use crate::api::Severity;
use crate::catalog::{DirCatalog, KubeCatalog};
use crate::compile::{compile_hashed, CompileSettings, Snapshot};
use crate::plan::Plan;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The current plan, shared by every data-plane component.
pub type SharedPlan = Arc<ArcSwap<Plan>>;

pub struct PlanSwap {
    plan: SharedPlan,
    settings: CompileSettings,
    metrics: Arc<Metrics>,
    revision_tx: watch::Sender<u64>,
    last_snapshot_diagnostics: Vec<crate::api::Diagnostic>,
}

impl PlanSwap {
    pub fn new(settings: CompileSettings, metrics: Arc<Metrics>) -> Self {
        let (revision_tx, _) = watch::channel(0);
        PlanSwap {
            plan: Arc::new(ArcSwap::from_pointee(Plan::default())),
            settings,
            metrics,
            revision_tx,
            last_snapshot_diagnostics: Vec::new(),
        }
    }

    pub fn plan(&self) -> SharedPlan {
        self.plan.clone()
    }

    /// Revision of the serving plan; 0 until the first compile.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// Compiles `snapshot` and swaps the result in unless its content equals the current plan's.
    /// Returns whether a new plan was swapped in.
    pub fn swap_in(&mut self, snapshot: &Snapshot) -> bool {
        let started = Instant::now();
        let content_hash = snapshot.content_hash();
        let current = self.plan.load_full();
        if current.content_hash == content_hash
            && self.last_snapshot_diagnostics == snapshot.diagnostics
        {
            self.metrics.reloads.with_label_values(&["unchanged"]).inc();
            return false;
        }
        let mut next = compile_hashed(
            snapshot,
            content_hash,
            &self.settings,
            (current.revision > 0).then_some(&*current),
        );
        next.revision = current.revision + 1;
        for d in &next.diagnostics {
            match d.severity {
                Severity::Error => tracing::error!(diagnostic = %d, "catalog"),
                Severity::Warning => tracing::warn!(diagnostic = %d, "catalog"),
            }
        }
        let outcome = if next.error_count() > 0 {
            "partial"
        } else {
            "success"
        };
        self.metrics.observe_plan(&next, outcome, started.elapsed());
        tracing::info!(
            revision = next.revision,
            content_hash = %next.content_hash,
            routes = next.routes.len(),
            functions = next.functions.len(),
            errors = next.error_count(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "plan swapped in"
        );
        self.last_snapshot_diagnostics = snapshot.diagnostics.clone();
        let revision = next.revision;
        self.plan.store(Arc::new(next));
        self.revision_tx.send_replace(revision);
        true
    }

    /// Compiles from the Kubernetes catalog until the process ends: nothing until every
    /// watched kind has listed once (so `/readyz` stays false and no half catalog is
    /// served), then once per burst of changes. Changes that arrive during a compile
    /// are coalesced into the next one.
    pub async fn follow_kube(
        mut self,
        catalog: Arc<std::sync::Mutex<KubeCatalog>>,
        changed: Arc<Notify>,
        debounce: Duration,
    ) {
        let mut freed = FreedMemory::default();
        loop {
            freed.wait(&changed).await;
            if !debounce.is_zero() {
                while tokio::time::timeout(debounce, changed.notified())
                    .await
                    .is_ok()
                {}
            }
            let snapshot = {
                let catalog = catalog.lock().expect("not poisoned");
                if !catalog.synced() {
                    continue;
                }
                catalog.snapshot()
            };
            // Released at the end of this pass, so the catalog updates it in place.
            freed.owed |= self.swap_in(&snapshot);
        }
    }

    /// Follows a directory until the process ends: one scan and swap per burst of
    /// file events, after `debounce` of quiet. A full rescan also runs every
    /// `RESYNC_EVERY`, so a lost event (inotify queue overflow, a folder that did not
    /// exist yet when watching started) cannot leave a stale plan for long.
    pub async fn follow_dir(mut self, mut catalog: DirCatalog, debounce: Duration) {
        const RESYNC_EVERY: Duration = Duration::from_secs(10);
        // A folder that does not exist yet is looked for this often, so creating it is
        // followed as promptly as an edit (a missing folder costs nothing to scan).
        const WATCH_RETRY: Duration = Duration::from_secs(1);
        let signal = Arc::new(Notify::new());
        let mut watch = None;
        let mut watch_failed = false;
        let mut freed = FreedMemory {
            owed: self.swap_in(&catalog.scan()),
        };
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.tick().await;
        loop {
            if watch.is_none() {
                match catalog.watch(signal.clone()) {
                    Ok(w) => {
                        watch = Some(w);
                        if watch_failed {
                            tracing::info!(dir = %catalog.dir().display(), "watching catalog directory");
                        }
                        // Changes made before the watch existed.
                        signal.notify_one();
                    }
                    Err(e) if !watch_failed => {
                        watch_failed = true;
                        tracing::warn!(dir = %catalog.dir().display(), error = %e, "cannot watch catalog directory yet; looking for it every second")
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = freed.wait(&signal) => {
                    // Coalesce: wait until events stop arriving for `debounce`.
                    while tokio::time::timeout(debounce, signal.notified()).await.is_ok() {}
                }
                _ = resync.tick() => {}
                _ = tokio::time::sleep(WATCH_RETRY), if watch.is_none() => {}
            }
            freed.owed |= self.swap_in(&catalog.scan());
        }
    }
}

/// What compiles freed, handed back to the OS once changes pause. A compile frees, on
/// this thread, what parsing, the snapshot and the previous plan held; mimalloc returns
/// such pages only when this thread allocates again, which may be minutes away (tens of
/// MB at 10,000 Functions). A forced collection costs 1–2 ms there, so it waits for a
/// quiet moment instead of delaying the next change of a burst.
#[derive(Default)]
struct FreedMemory {
    owed: bool,
}

impl FreedMemory {
    const QUIET: Duration = Duration::from_millis(100);

    /// Waits for `changed`, releasing what is owed if nothing changes for `QUIET`.
    async fn wait(&mut self, changed: &Notify) {
        if self.owed {
            tokio::select! {
                _ = changed.notified() => return,
                _ = tokio::time::sleep(Self::QUIET) => {
                    // SAFETY: mi_collect has no preconditions; it walks this thread's heap.
                    // A no-op when the process's allocator is not mimalloc.
                    unsafe { libmimalloc_sys::mi_collect(true) };
                    self.owed = false;
                }
            }
        }
        changed.notified().await
    }
}
