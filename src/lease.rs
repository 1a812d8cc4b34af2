//! A `coordination.k8s.io` Lease that picks one replica for a job: the Function status
//! writer, the cron ticks. A holder renews every third of the lease duration; another
//! replica takes the Lease once its record stayed unchanged for the whole duration by
//! that replica's own clock, or at once when the holder released it.

use crate::config::LeaseSettings;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

pub struct Lease {
    client: kube::Client,
    settings: LeaseSettings,
    /// What the Lease is for, in log lines.
    what: &'static str,
    state: LeaseState,
}

#[derive(Default)]
struct LeaseState {
    leader: bool,
    last_renewal: Option<Instant>,
    /// (holder, renewTime) last seen, and when this replica first saw it: another
    /// holder's lease expires when its record stays unchanged for the lease duration by
    /// this replica's clock (no comparison of clocks across machines).
    seen: Option<(String, String)>,
    seen_at: Option<Instant>,
}

fn lease_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"),
        "leases",
    )
}

pub(crate) fn now_rfc3339(micros: bool) -> String {
    let now = time::OffsetDateTime::now_utc();
    let (y, mo, d) = (now.year(), now.month() as u8, now.day());
    let (h, mi, s) = (now.hour(), now.minute(), now.second());
    if micros {
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
            now.microsecond()
        )
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

impl Lease {
    pub fn new(client: kube::Client, settings: LeaseSettings, what: &'static str) -> Lease {
        Lease {
            client,
            settings,
            what,
            state: LeaseState::default(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    /// How often a holder renews: a third of the lease duration.
    pub fn renew_every(&self) -> Duration {
        self.settings.lease_duration / 3
    }

    /// Whether this replica held the Lease at its last renewal.
    pub fn leader(&self) -> bool {
        self.state.leader
    }

    /// Whether a renewal (or an attempt to take the Lease) is due.
    fn due(&self) -> bool {
        self.state
            .last_renewal
            .is_none_or(|t| t.elapsed() >= self.renew_every())
    }

    /// Takes or renews the Lease when due; whether this replica holds it now, and whether
    /// that changed.
    pub async fn renew(&mut self) -> (bool, bool) {
        if !self.due() {
            return (self.state.leader, false);
        }
        let leader = self.try_lead().await;
        let changed = leader != self.state.leader;
        self.state.leader = leader;
        (leader, changed)
    }

    /// Empties the Lease's holder if it is still this replica, so another replica takes
    /// over at its next renewal instead of after the lease expires.
    pub async fn release(&mut self) {
        let api = self.lease_api();
        let s = &self.settings;
        let Ok(Some(mut lease)) = api.get_opt(&s.lease_name).await else {
            return;
        };
        if lease.data["spec"]["holderIdentity"].as_str() != Some(s.identity.as_str()) {
            return;
        }
        lease.data["spec"]["holderIdentity"] = json!("");
        lease.data["spec"]["renewTime"] = json!(now_rfc3339(true));
        match api
            .replace(&s.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(identity = %s.identity, "released the {} lease", self.what),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the {} lease; it expires on its own", self.what)
            }
        }
        self.state.leader = false;
    }

    fn lease_api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.settings.lease_namespace,
            &lease_resource(),
        )
    }

    /// Takes or renews the Lease; whether this replica holds it now.
    async fn try_lead(&mut self) -> bool {
        let api = self.lease_api();
        let s = &self.settings;
        let now = now_rfc3339(true);
        let seconds = s.lease_duration.as_secs().max(1);
        let result = match api.get_opt(&s.lease_name).await {
            Ok(None) => {
                let lease: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": s.lease_name, "namespace": s.lease_namespace},
                    "spec": {"holderIdentity": s.identity, "leaseDurationSeconds": seconds,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
                }))
                .expect("a valid object");
                api.create(&PostParams::default(), &lease)
                    .await
                    .map(|_| true)
            }
            Ok(Some(mut lease)) => {
                let spec = lease.data.get("spec").cloned().unwrap_or(json!({}));
                let holder = spec["holderIdentity"].as_str().unwrap_or("").to_owned();
                let record = (
                    holder.clone(),
                    spec["renewTime"].as_str().unwrap_or("").to_owned(),
                );
                if self.state.seen.as_ref() != Some(&record) {
                    self.state.seen = Some(record);
                    self.state.seen_at = Some(Instant::now());
                }
                let held_for = spec["leaseDurationSeconds"]
                    .as_u64()
                    .map(Duration::from_secs)
                    .unwrap_or(s.lease_duration);
                let expired = self.state.seen_at.is_some_and(|t| t.elapsed() > held_for);
                if holder == s.identity || holder.is_empty() || expired {
                    let mut spec = spec;
                    if holder != s.identity {
                        spec["acquireTime"] = json!(now);
                        spec["leaseTransitions"] =
                            json!(spec["leaseTransitions"].as_i64().unwrap_or(0) + 1);
                    }
                    spec["holderIdentity"] = json!(s.identity);
                    spec["renewTime"] = json!(now);
                    spec["leaseDurationSeconds"] = json!(seconds);
                    lease.data["spec"] = spec;
                    api.replace(&s.lease_name, &PostParams::default(), &lease)
                        .await
                        .map(|_| true)
                } else {
                    Ok(false)
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(leader) => {
                if leader {
                    self.state.last_renewal = Some(Instant::now());
                }
                leader
            }
            // Someone else wrote the Lease first.
            Err(kube::Error::Api(status)) if status.code == 409 => false,
            Err(e) => {
                tracing::warn!(error = %e, lease = %s.lease_name, "cannot read or renew the {} lease; not acting until it can", self.what);
                false
            }
        }
    }
}
