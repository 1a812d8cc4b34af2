//! KEDA external push scaler (`externalscaler.ExternalScaler`, from the project's own
//! proto/externalscaler.proto). A ScaledObject's `scalerMetadata` names the function
//! (`function`, `namespace`; else the ScaledObjectRef's name and namespace).
//! StreamIsActive sends `true` the moment a function's first request waits, then again
//! every second while requests wait or run, and `false` when the last one is done.
//! GetMetrics reports waiting plus in-flight requests in the int64 and the float field,
//! so KEDA before and after 2.17 both read it.

use super::Activator;
use crate::telemetry::Metrics;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub mod proto {
    tonic::include_proto!("externalscaler");
}

use proto::external_scaler_server::ExternalScaler;
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

pub use proto::external_scaler_client::ExternalScalerClient;
pub use proto::external_scaler_server::ExternalScalerServer;

/// While active, StreamIsActive repeats `true` this often.
const REPEAT_ACTIVE: Duration = Duration::from_secs(1);

pub struct Scaler {
    pub activator: Arc<Activator>,
    pub metrics: Arc<Metrics>,
}

/// (namespace, function) a ScaledObject is about.
fn function_of(r: &ScaledObjectRef) -> Result<(String, String), Status> {
    let pick = |key: &str, fallback: &str| {
        r.scaler_metadata
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| fallback.to_owned())
    };
    let namespace = pick("namespace", &r.namespace);
    let function = pick("function", &r.name);
    if function.is_empty() {
        return Err(Status::invalid_argument(
            "scalerMetadata.function (or the ScaledObject's name) is required",
        ));
    }
    let namespace = if namespace.is_empty() {
        "default".to_owned()
    } else {
        namespace
    };
    Ok((namespace, function))
}

fn metric_name(r: &ScaledObjectRef, ns: &str, function: &str) -> String {
    r.scaler_metadata
        .get("metricName")
        .cloned()
        .unwrap_or_else(|| format!("fngate-{ns}-{function}"))
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let (ns, function) = function_of(request.get_ref())?;
        let result = self.activator.activity(&ns, &function).load() > 0;
        Ok(Response::new(IsActiveResponse { result }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<ActiveStream>, Status> {
        let (ns, function) = function_of(request.get_ref())?;
        let activity = self.activator.activity(&ns, &function);
        let changes = activity.subscribe();
        let metrics = self.metrics.clone();
        let labels = [ns, function];
        let stream =
            futures::stream::unfold((changes, None::<bool>), move |(mut changes, last)| {
                let (metrics, labels) = (metrics.clone(), labels.clone());
                async move {
                    loop {
                        let active = *changes.borrow_and_update();
                        // A new state is sent at once; `true` again every second.
                        if last != Some(active) {
                            break;
                        }
                        if active {
                            if tokio::time::timeout(REPEAT_ACTIVE, changes.changed())
                                .await
                                .is_err()
                            {
                                break;
                            }
                        } else if changes.changed().await.is_err() {
                            return None;
                        }
                    }
                    let active = *changes.borrow();
                    if active && last != Some(true) {
                        metrics
                            .scale_signals
                            .with_label_values(&[&labels[0], &labels[1], "keda"])
                            .inc();
                    }
                    Some((
                        Ok(IsActiveResponse { result: active }),
                        (changes, Some(active)),
                    ))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let r = request.get_ref();
        let (ns, function) = function_of(r)?;
        let target = r
            .scaler_metadata
            .get("targetSize")
            .map(|v| {
                v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "targetSize {v:?} must be a positive whole number"
                    ))
                })
            })
            .transpose()?
            .unwrap_or(1);
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: metric_name(r, &ns, &function),
                target_size: target,
                target_size_float: target as f64,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let r = request.get_ref();
        let object = r
            .scaled_object_ref
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        let (ns, function) = function_of(object)?;
        let load = self.activator.activity(&ns, &function).load();
        let name = if r.metric_name.is_empty() {
            metric_name(object, &ns, &function)
        } else {
            r.metric_name.clone()
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: name,
                metric_value: load as i64,
                metric_value_float: load as f64,
            }],
        }))
    }
}
