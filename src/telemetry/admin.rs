use super::Metrics;
use crate::plan_swap::SharedPlan;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

/// The admin listener's request handler.
pub struct AdminApp {
    pub plan: SharedPlan,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<crate::drain::Drain>,
}

impl AdminApp {
    fn respond(&self, path: &str) -> (u16, &'static str, Vec<u8>) {
        let plan = self.plan.load();
        match path {
            "/metrics" => (200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            // Kubernetes takes a draining replica out of its Services.
            "/readyz" if self.drain.is_draining() => (
                503,
                "text/plain",
                b"not ready: draining (shutting down)\n".to_vec(),
            ),
            "/readyz" if plan.revision > 0 => (200, "text/plain", b"ready\n".to_vec()),
            "/readyz" => (
                503,
                "text/plain",
                b"not ready: no plan compiled yet\n".to_vec(),
            ),
            "/routes" => {
                let body = json!({
                    "revision": plan.revision,
                    "content_hash": plan.content_hash,
                    "routes": plan.route_summaries(),
                });
                (
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            "/triggers" => {
                let triggers: Vec<_> = plan
                    .triggers
                    .triggers
                    .iter()
                    .map(|(key, spec)| json!({ "key": key, "spec": spec }))
                    .collect();
                let body = json!({ "revision": plan.revision, "triggers": triggers });
                (
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            "/dapr" => {
                // What each app may reach through the Dapr API; never the token itself.
                let apps: Vec<_> = plan
                    .dapr
                    .apps
                    .values()
                    .map(|a| {
                        let names = |m: Vec<(&str, &String)>| {
                            m.into_iter()
                                .map(|(n, k)| json!({ "name": n, "type": k }))
                                .collect::<Vec<_>>()
                        };
                        json!({
                            "app_id": a.app_id,
                            "token": a.token.is_some(),
                            "states": names(a.states.iter().map(|(n, c)| (n, &c.kind)).collect()),
                            "pubsubs": names(a.pubsubs.iter().map(|(n, c)| (n, &c.kind)).collect()),
                            "bindings": names(a.bindings.iter().map(|(n, c)| (n, &c.kind)).collect()),
                            "secretStores": names(a.secret_stores.iter().map(|(n, c)| (n, &c.kind)).collect()),
                            "outputs": a.outputs,
                        })
                    })
                    .collect();
                let body = json!({ "revision": plan.revision, "apps": apps });
                (
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            "/diagnostics" => {
                let body = json!({ "revision": plan.revision, "diagnostics": plan.diagnostics });
                (
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            _ => (
                404,
                "text/plain",
                b"not found; try /metrics /healthz /readyz /routes /triggers /dapr /diagnostics\n"
                    .to_vec(),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (status, content_type, body) = self.respond(&path);
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .expect("static response parts are valid")
    }
}
