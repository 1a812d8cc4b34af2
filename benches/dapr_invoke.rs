//! Service invocation's cost: a call through fngate's Dapr API (HTTP `/v1.0/invoke`,
//! gRPC `InvokeService`, gRPC proxy mode) against the same call made directly to the
//! function's endpoint
//! (an HTTP POST; a gRPC `AppCallback/OnInvoke`), same concurrency, same run. fngate runs
//! alone on CPU 1 (`taskset`, one worker thread); the functions and this process (the
//! load generator) share CPU 0. fngate's CPU per call comes from `/proc/<pid>/stat`.
//!
//! `cargo bench --bench dapr_invoke [-- SECONDS]` (default 5 s per throughput phase).

mod support;

use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient;
use dapr::dapr::proto::runtime::v1::app_callback_server::{AppCallback, AppCallbackServer};
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use http_body_util::{BodyExt, Full};
use support::free_port;
use support::state::{cpu_seconds, http_client, start_fngate, HttpClient, CONCURRENCY, TOKEN};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &[u8] = &[b'x'; 256];

fn catalog(http_app: u16, grpc_app: u16) -> String {
    let slice = |name: &str, port: u16| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n  - {{port: {port}}}\nendpoints:\n  - addresses: [127.0.0.1]\n    conditions: {{ready: true}}\n---\n"
        )
    };
    let function = |name: &str, protocol: &str, port: u16| {
        format!(
            "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  serving:\n    annotations:\n      dapr.io/app-protocol: {protocol}\n      dapr.io/app-port: \"{port}\"\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-token, namespace: default}}\nstringData: {{token: {TOKEN}}}\n---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {{name: bench, namespace: default}}\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: bench-token\n---\n{}{}{}{}",
        function("happ", "http", http_app),
        slice("happ", http_app),
        function("gapp", "grpc", grpc_app),
        slice("gapp", grpc_app),
    )
}

/// The functions: an HTTP server echoing the body, a gRPC app answering OnInvoke.
fn serve_apps(http_port: u16, grpc_port: u16) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::spawn(async move {
                struct App;
                #[tonic::async_trait]
                impl AppCallback for App {
                    async fn on_invoke(
                        &self,
                        r: tonic::Request<common::InvokeRequest>,
                    ) -> Result<tonic::Response<common::InvokeResponse>, tonic::Status>
                    {
                        Ok(tonic::Response::new(common::InvokeResponse {
                            data: r.into_inner().data,
                            content_type: "application/octet-stream".into(),
                        }))
                    }
                    async fn list_topic_subscriptions(
                        &self,
                        _: tonic::Request<()>,
                    ) -> Result<tonic::Response<rt::ListTopicSubscriptionsResponse>, tonic::Status>
                    {
                        Ok(tonic::Response::new(Default::default()))
                    }
                    async fn on_topic_event(
                        &self,
                        _: tonic::Request<rt::TopicEventRequest>,
                    ) -> Result<tonic::Response<rt::TopicEventResponse>, tonic::Status>
                    {
                        Err(tonic::Status::unimplemented(""))
                    }
                    async fn list_input_bindings(
                        &self,
                        _: tonic::Request<()>,
                    ) -> Result<tonic::Response<rt::ListInputBindingsResponse>, tonic::Status>
                    {
                        Ok(tonic::Response::new(Default::default()))
                    }
                    async fn on_binding_event(
                        &self,
                        _: tonic::Request<rt::BindingEventRequest>,
                    ) -> Result<tonic::Response<rt::BindingEventResponse>, tonic::Status>
                    {
                        Err(tonic::Status::unimplemented(""))
                    }
                    async fn on_bulk_topic_event(
                        &self,
                        _: tonic::Request<rt::TopicEventBulkRequest>,
                    ) -> Result<tonic::Response<rt::TopicEventBulkResponse>, tonic::Status>
                    {
                        Err(tonic::Status::unimplemented(""))
                    }
                    async fn on_job_event(
                        &self,
                        _: tonic::Request<rt::JobEventRequest>,
                    ) -> Result<tonic::Response<rt::JobEventResponse>, tonic::Status>
                    {
                        Err(tonic::Status::unimplemented(""))
                    }
                }
                tonic::transport::Server::builder()
                    .add_service(AppCallbackServer::new(App))
                    .serve(format!("127.0.0.1:{grpc_port}").parse().unwrap())
                    .await
                    .unwrap();
            });
            support::serve_http1(
                http_port,
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    hyper::Response::new(Full::new(body))
                },
            )
            .await
        });
    });
}

#[derive(Clone)]
enum Target {
    DirectHttp(HttpClient, u16),
    FngateHttp(HttpClient, u16),
    DirectGrpc(AppCallbackClient<tonic::transport::Channel>),
    FngateGrpc(DaprClient<tonic::transport::Channel>),
    /// The app's own client pointed at fngate with `dapr-app-id` (proxy mode).
    FngateProxy(AppCallbackClient<tonic::transport::Channel>),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::DirectHttp(..) => "HTTP direct",
            Target::FngateHttp(..) => "HTTP via fngate",
            Target::DirectGrpc(_) => "gRPC direct",
            Target::FngateGrpc(_) => "gRPC via fngate",
            Target::FngateProxy(_) => "gRPC proxied",
        }
    }

    async fn call(&mut self) {
        let path = match self {
            Target::DirectHttp(..) => "/echo",
            _ => "/v1.0/invoke/happ-default/method/echo",
        };
        match self {
            Target::DirectHttp(c, port) | Target::FngateHttp(c, port) => {
                let req = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"))
                    .header("dapr-api-token", TOKEN)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(Bytes::from_static(BODY)))
                    .unwrap();
                let r = c.request(req).await.expect("an answer");
                assert!(r.status().is_success(), "{}", r.status());
                let body = r.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), BODY.len());
            }
            Target::DirectGrpc(c) => {
                let r = c
                    .on_invoke(invoke_request())
                    .await
                    .expect("an answer")
                    .into_inner();
                assert_eq!(r.data.unwrap().value.len(), BODY.len());
            }
            Target::FngateProxy(c) => {
                let mut req = invoke_request();
                req.metadata_mut()
                    .insert("dapr-api-token", TOKEN.parse().unwrap());
                req.metadata_mut()
                    .insert("dapr-app-id", "gapp-default".parse().unwrap());
                let r = c.on_invoke(req).await.expect("an answer").into_inner();
                assert_eq!(r.data.unwrap().value.len(), BODY.len());
            }
            Target::FngateGrpc(c) => {
                let mut req = tonic::Request::new(rt::InvokeServiceRequest {
                    id: "gapp-default".into(),
                    message: Some(invoke_request().into_inner()),
                });
                req.metadata_mut()
                    .insert("dapr-api-token", TOKEN.parse().unwrap());
                let r = c.invoke_service(req).await.expect("an answer").into_inner();
                assert_eq!(r.data.unwrap().value.len(), BODY.len());
            }
        }
    }
}

fn invoke_request() -> tonic::Request<common::InvokeRequest> {
    tonic::Request::new(common::InvokeRequest {
        method: "echo".into(),
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: BODY.to_vec(),
        }),
        content_type: "application/octet-stream".into(),
        http_extension: None,
    })
}

async fn throughput(target: &Target, secs: f64) -> (f64, u64) {
    let target = target.clone();
    support::closed_loop(CONCURRENCY, secs, move |_, _| {
        let mut t = target.clone();
        async move {
            t.call().await;
            1
        }
    })
    .await
}

/// Latency of single calls issued at `rate` per second (open loop): p50, p99 in ms.
async fn latency_at(target: &Target, rate: u64, count: u64) -> (f64, f64) {
    support::open_loop(rate, count, |_| {
        let mut t = target.clone();
        async move { t.call().await }
    })
    .await
}

fn main() {
    let secs: f64 = support::number_arg(5.0);
    // The functions on CPU 0 too.
    support::pin_self_to_cpu0();
    let (http_app, grpc_app) = (free_port(), free_port());
    serve_apps(http_app, grpc_app);
    support::state::wait_port(http_app);
    support::state::wait_port(grpc_app);
    let gate = start_fngate(&catalog(http_app, grpc_app), "1");
    let pid = gate.proc.0.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = |port: u16| async move {
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap()
        };
        let targets = [
            Target::DirectHttp(http_client(), http_app),
            Target::FngateHttp(http_client(), gate.http),
            Target::DirectGrpc(AppCallbackClient::new(channel(grpc_app).await)),
            Target::FngateGrpc(DaprClient::new(channel(gate.grpc).await)),
            Target::FngateProxy(AppCallbackClient::new(channel(gate.grpc).await)),
        ];
        // Warm-up: connections, pools, the plan.
        for t in &targets {
            let _ = throughput(t, 0.5).await;
        }
        println!("service invocation, {CONCURRENCY} callers, {secs} s per phase, 256-byte bodies");
        println!(
            "{:<18} {:>11} {:>15} {:>10} {:>10}",
            "path", "calls/s", "fngate CPU/call", "p50 ms", "p99 ms"
        );
        let mut rows = Vec::new();
        for t in &targets {
            let cpu0 = cpu_seconds(pid);
            let (rate, n) = throughput(t, secs).await;
            let cpu = (cpu_seconds(pid) - cpu0) / n as f64 * 1e6;
            let (p50, p99) = latency_at(t, 1000, 3000).await;
            println!(
                "{:<18} {:>11.0} {:>12.1} µs {:>10.3} {:>10.3}",
                t.name(),
                rate,
                cpu,
                p50,
                p99
            );
            rows.push((rate, cpu, p99));
        }
        for (direct, via, what) in [(0, 1, "HTTP"), (2, 3, "gRPC"), (2, 4, "gRPC proxied")] {
            println!(
                "{what}: through fngate {:.2}x the direct rate; fngate CPU {:.1} µs per call; p99 added at 1,000 calls/s: {:.3} ms",
                rows[via].0 / rows[direct].0,
                rows[via].1,
                rows[via].2 - rows[direct].2
            );
        }
    });
}
