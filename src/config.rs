//! fngate's own settings file. Every key is optional; the defaults serve one machine.

use crate::api::parse_duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("settings file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("settings file {file}: field {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    listen: RawListen,
    tls: Option<RawTls>,
    catalog: RawCatalog,
    gateway: Option<String>,
    limits: RawLimits,
    timeouts: RawTimeouts,
    threads: Option<usize>,
    events: RawEvents,
    activator: RawActivator,
    http2: RawHttp2,
    http1: RawHttp1,
    shutdown: RawShutdown,
    dapr_api: RawDaprApi,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawDaprApi {
    max_connections: Option<usize>,
    body_read_timeout: Option<String>,
    max_in_flight_per_app: Option<usize>,
    grpc_max_concurrent_streams: Option<u32>,
    grpc_keepalive: Option<String>,
    tls: Option<RawDaprTls>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaprTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawShutdown {
    drain: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawHttp1 {
    own_loop: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawHttp2 {
    h2c: Option<bool>,
    max_concurrent_streams: Option<u32>,
    idle_timeout: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawActivator {
    max_waiting_per_function: Option<usize>,
    max_waiting: Option<usize>,
    hold_timeout: Option<String>,
    webhook: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawEvents {
    retry_initial: Option<String>,
    retry_max: Option<String>,
    max_attempts: Option<u32>,
    kafka_fetch_wait: Option<String>,
    kafka_instance_id: Option<String>,
    threads: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawListen {
    http: Option<String>,
    https: Option<String>,
    admin: Option<String>,
    scaler: Option<String>,
    dapr_grpc: Option<String>,
    dapr_http: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawCatalog {
    dir: Option<String>,
    kubernetes: RawKubernetes,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawKubernetes {
    enabled: bool,
    namespaces: Vec<String>,
    label_selector: Option<String>,
    secret_label_selector: Option<String>,
    kubeconfig: Option<String>,
    debounce: Option<String>,
    status: RawStatus,
    cron_lease_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawStatus {
    write: bool,
    lease_name: Option<String>,
    lease_namespace: Option<String>,
    lease_duration: Option<String>,
    identity: Option<String>,
}

/// The catalog read from the Kubernetes API instead of a folder.
#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    pub source: crate::catalog::KubeSource,
    /// `None`: `KUBECONFIG`, `~/.kube/config`, or the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Quiet time that ends a burst of watch events before a compile.
    pub debounce: Duration,
    /// Function status writing; `None` = never written.
    pub status: Option<LeaseSettings>,
    /// The Lease whose holder alone fires cron triggers, so each tick fires once across
    /// replicas (namespace, duration and identity as the status writer's).
    pub cron_lease: LeaseSettings,
}

/// A `coordination.k8s.io` Lease that picks one replica for a job (status writing, cron).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub lease_name: String,
    pub lease_namespace: String,
    pub lease_duration: Duration,
    /// This replica's name in the Lease.
    pub identity: String,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawLimits {
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    upstream_read: Option<String>,
    reload_debounce: Option<String>,
}

/// Resolved settings: addresses parsed, paths absolute, durations typed.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen_http: Option<SocketAddr>,
    pub listen_https: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub listen_admin: SocketAddr,
    pub catalog_dir: PathBuf,
    pub kubernetes: Option<KubernetesSettings>,
    pub gateway: String,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub connect_timeout: Duration,
    /// Idle time allowed between two reads from a backend; `None` = unlimited.
    pub upstream_read_timeout: Option<Duration>,
    pub reload_debounce: Duration,
    pub threads: usize,
    /// Threads of the event triggers' runtime.
    pub event_threads: usize,
    /// Event delivery defaults: backoff between attempts, attempts before dead-lettering.
    pub events: crate::compile::EventDefaults,
    /// Scale from zero: bounds and default wait of held requests.
    pub hold: crate::activator::HoldLimits,
    /// KEDA external push scaler listener; `None` = not served.
    pub listen_scaler: Option<SocketAddr>,
    /// Dapr's gRPC API for functions (`DAPR_GRPC_PORT`); `None` = not served.
    pub listen_dapr_grpc: Option<SocketAddr>,
    /// Dapr's HTTP API for functions (`DAPR_HTTP_PORT`); `None` = not served.
    pub listen_dapr_http: Option<SocketAddr>,
    /// What one function may take of the Dapr API.
    pub dapr_api: crate::runtime::ApiLimits,
    /// TLS on both Dapr API listeners; `None`: plaintext.
    pub dapr_tls: Option<crate::runtime::DaprTlsFiles>,
    /// URL told (POST) when a function's first request starts waiting.
    pub scale_webhook: Option<String>,
    /// HTTP/2 from clients: with prior knowledge on the HTTP listener (h2c).
    pub h2c: bool,
    /// HTTP/1 requests fngate's own loop can forward take it; `false`: every request goes
    /// through pingora-proxy.
    pub http1_own_loop: bool,
    /// Streams one HTTP/2 client connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// An HTTP/2 client connection with no open stream for this long is closed; `None`:
    /// never.
    pub h2_idle_timeout: Option<Duration>,
    /// Longest graceful drain after SIGTERM; `0s` exits once the listeners closed.
    pub shutdown_drain: Duration,
}

impl Settings {
    pub fn compile_settings(&self) -> crate::compile::CompileSettings {
        crate::compile::CompileSettings {
            gateway: self.gateway.clone(),
            events: self.events.clone(),
        }
    }

    /// Defaults as if read from an empty file in `base`.
    pub fn defaults_in(base: &Path) -> Settings {
        Settings::resolve(RawSettings::default(), base, "<defaults>").expect("defaults are valid")
    }

    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: name.clone(),
            source,
        })?;
        let raw: RawSettings = if text.trim().is_empty() {
            RawSettings::default()
        } else {
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text)).map_err(
                |e| ConfigError::Invalid {
                    file: name.clone(),
                    field: e.path().to_string(),
                    message: e.into_inner().to_string(),
                },
            )?
        };
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Settings::resolve(raw, base, &name)
    }

    fn resolve(raw: RawSettings, base: &Path, file: &str) -> Result<Settings, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            field: field.to_owned(),
            message,
        };
        let addr = |field: &str,
                    v: Option<&str>,
                    default: Option<&str>|
         -> Result<Option<SocketAddr>, ConfigError> {
            match v.or(default) {
                None | Some("") => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|_| {
                    invalid(field, format!("{s:?} is not an address like 0.0.0.0:8080"))
                }),
            }
        };
        let path = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let dur = |field: &str,
                   v: &Option<String>,
                   default: &str|
         -> Result<Option<Duration>, ConfigError> {
            parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| invalid(field, e))
        };
        let listen_https = addr("listen.https", raw.listen.https.as_deref(), None)?;
        let (tls_cert, tls_key) = match (&raw.tls, listen_https) {
            (Some(t), _) => (Some(path(&t.cert)), Some(path(&t.key))),
            (None, Some(_)) => {
                return Err(invalid(
                    "tls",
                    "listen.https needs tls.cert and tls.key".into(),
                ))
            }
            (None, None) => (None, None),
        };
        let gateway = raw
            .gateway
            .unwrap_or_else(|| crate::compile::DEFAULT_GATEWAY.into());
        if !gateway.contains('/') {
            return Err(invalid(
                "gateway",
                format!("{gateway:?} must be namespace/name"),
            ));
        }
        let event_defaults = crate::compile::EventDefaults::default();
        let events = crate::compile::EventDefaults {
            retry_initial: dur("events.retry_initial", &raw.events.retry_initial, "100ms")?
                .unwrap_or(event_defaults.retry_initial),
            retry_max: dur("events.retry_max", &raw.events.retry_max, "10s")?
                .unwrap_or(event_defaults.retry_max),
            max_attempts: positive(
                "events.max_attempts",
                raw.events.max_attempts,
                event_defaults.max_attempts,
                &invalid,
            )?,
            kafka_fetch_wait: dur(
                "events.kafka_fetch_wait",
                &raw.events.kafka_fetch_wait,
                "100ms",
            )?
            .unwrap_or(event_defaults.kafka_fetch_wait),
            kafka_instance_id: kafka_instance_id(
                raw.events.kafka_instance_id.as_deref(),
                std::env::var("POD_NAME").ok().as_deref(),
            )
            .map_err(|m| invalid("events.kafka_instance_id", m))?,
        };
        let api_defaults = crate::runtime::ApiLimits::default();
        let d = &raw.dapr_api;
        let dapr_api = crate::runtime::ApiLimits {
            max_connections: positive(
                "dapr_api.max_connections",
                d.max_connections,
                api_defaults.max_connections,
                &invalid,
            )?,
            body_read_timeout: dur("dapr_api.body_read_timeout", &d.body_read_timeout, "30s")?
                .ok_or_else(|| {
                    invalid("dapr_api.body_read_timeout", "must be more than 0s".into())
                })?,
            max_in_flight_per_app: positive(
                "dapr_api.max_in_flight_per_app",
                d.max_in_flight_per_app,
                api_defaults.max_in_flight_per_app,
                &invalid,
            )?,
            grpc_max_concurrent_streams: positive(
                "dapr_api.grpc_max_concurrent_streams",
                d.grpc_max_concurrent_streams,
                api_defaults.grpc_max_concurrent_streams,
                &invalid,
            )?,
            grpc_keepalive: dur("dapr_api.grpc_keepalive", &d.grpc_keepalive, "60s")?
                .ok_or_else(|| invalid("dapr_api.grpc_keepalive", "must be more than 0s".into()))?,
        };
        let hold_defaults = crate::activator::HoldLimits::default();
        let hold = crate::activator::HoldLimits {
            per_function: raw
                .activator
                .max_waiting_per_function
                .unwrap_or(hold_defaults.per_function),
            total: raw.activator.max_waiting.unwrap_or(hold_defaults.total),
            timeout: dur("activator.hold_timeout", &raw.activator.hold_timeout, "30s")?
                .unwrap_or(Duration::ZERO),
        };
        if let Some(url) = &raw.activator.webhook {
            crate::activator::Webhook::new(url).map_err(|e| invalid("activator.webhook", e))?;
        }
        let k = &raw.catalog.kubernetes;
        let kubernetes = if k.enabled {
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let lease = |name: String| -> Result<LeaseSettings, ConfigError> {
                Ok(LeaseSettings {
                    lease_name: name,
                    lease_namespace: k
                        .status
                        .lease_namespace
                        .clone()
                        .or_else(|| env("POD_NAMESPACE"))
                        .unwrap_or_else(|| "default".into()),
                    lease_duration: dur(
                        "catalog.kubernetes.status.lease_duration",
                        &k.status.lease_duration,
                        "15s",
                    )?
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or_else(|| {
                        invalid(
                            "catalog.kubernetes.status.lease_duration",
                            "must be at least 1s".into(),
                        )
                    })?,
                    identity: k
                        .status
                        .identity
                        .clone()
                        .or_else(|| env("POD_NAME"))
                        .or_else(|| env("HOSTNAME"))
                        .unwrap_or_else(|| format!("fngate-{}", std::process::id())),
                })
            };
            let status = if k.status.write {
                Some(lease(
                    k.status
                        .lease_name
                        .clone()
                        .unwrap_or_else(|| "fngate-status-writer".into()),
                )?)
            } else {
                None
            };
            let cron_lease = lease(
                k.cron_lease_name
                    .clone()
                    .unwrap_or_else(|| "fngate-cron".into()),
            )?;
            Some(KubernetesSettings {
                source: crate::catalog::KubeSource {
                    namespaces: k.namespaces.clone(),
                    label_selector: k.label_selector.clone().filter(|s| !s.is_empty()),
                    secret_label_selector: k
                        .secret_label_selector
                        .clone()
                        .filter(|s| !s.is_empty()),
                },
                kubeconfig: k.kubeconfig.as_deref().map(path),
                debounce: dur("catalog.kubernetes.debounce", &k.debounce, "0s")?
                    .unwrap_or_default(),
                status,
                cron_lease,
            })
        } else {
            None
        };
        let threads = raw.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        Ok(Settings {
            kubernetes,
            events,
            hold,
            listen_scaler: addr("listen.scaler", raw.listen.scaler.as_deref(), None)?,
            listen_dapr_grpc: addr(
                "listen.dapr_grpc",
                raw.listen.dapr_grpc.as_deref(),
                Some("127.0.0.1:50001"),
            )?,
            listen_dapr_http: addr(
                "listen.dapr_http",
                raw.listen.dapr_http.as_deref(),
                Some("127.0.0.1:3500"),
            )?,
            dapr_api,
            dapr_tls: raw
                .dapr_api
                .tls
                .as_ref()
                .map(|t| crate::runtime::DaprTlsFiles {
                    cert: path(&t.cert),
                    key: path(&t.key),
                    client_ca: t.client_ca.as_deref().map(path),
                }),
            scale_webhook: raw.activator.webhook.clone(),
            listen_http: addr(
                "listen.http",
                raw.listen.http.as_deref(),
                Some("0.0.0.0:8080"),
            )?,
            listen_https,
            tls_cert,
            tls_key,
            listen_admin: addr(
                "listen.admin",
                raw.listen.admin.as_deref(),
                Some("127.0.0.1:9090"),
            )?
            .ok_or_else(|| {
                invalid(
                    "listen.admin",
                    "the admin listener cannot be disabled".into(),
                )
            })?,
            catalog_dir: path(raw.catalog.dir.as_deref().unwrap_or("functions")),
            gateway,
            max_header_bytes: raw.limits.max_header_bytes.unwrap_or(64 * 1024),
            max_body_bytes: raw.limits.max_body_bytes.unwrap_or(32 * 1024 * 1024),
            connect_timeout: dur("timeouts.connect", &raw.timeouts.connect, "2s")?
                .unwrap_or(Duration::from_secs(2)),
            upstream_read_timeout: dur(
                "timeouts.upstream_read",
                &raw.timeouts.upstream_read,
                "300s",
            )?,
            reload_debounce: dur(
                "timeouts.reload_debounce",
                &raw.timeouts.reload_debounce,
                "50ms",
            )?
            .unwrap_or_default(),
            threads,
            h2c: raw.http2.h2c.unwrap_or(true),
            http1_own_loop: raw.http1.own_loop.unwrap_or(true),
            h2_idle_timeout: dur("http2.idle_timeout", &raw.http2.idle_timeout, "60s")?,
            // Under Kubernetes' default 30 s termination grace period, with room for the
            // endpoints controller to take the pod out of its Services first.
            shutdown_drain: dur("shutdown.drain", &raw.shutdown.drain, "25s")?.unwrap_or_default(),
            h2_max_concurrent_streams: positive(
                "http2.max_concurrent_streams",
                raw.http2.max_concurrent_streams,
                100,
                &invalid,
            )?,
            // Event delivery is CPU-bound at high rates: as many threads as the proxy.
            event_threads: positive("events.threads", raw.events.threads, threads, &invalid)?,
        })
    }
}

/// A count that must be at least 1: `value`, else `default`.
fn positive<T: Default + PartialEq>(
    field: &str,
    value: Option<T>,
    default: T,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<T, ConfigError> {
    match value {
        Some(n) if n == T::default() => Err(invalid(field, "must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_settings_folder_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fngate.yaml");
        std::fs::write(
            &file,
            "listen:\n  http: 127.0.0.1:1234\ncatalog:\n  dir: fns\n",
        )
        .unwrap();
        let s = Settings::load(&file).unwrap();
        assert_eq!(s.listen_http, Some("127.0.0.1:1234".parse().unwrap()));
        assert_eq!(s.catalog_dir, dir.path().join("fns"));
        assert_eq!(s.listen_admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(s.gateway, "openfunction/openfunction");
    }

    #[test]
    fn a_bad_value_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fngate.yaml");
        std::fs::write(&file, "listen:\n  http: nowhere\n").unwrap();
        let e = Settings::load(&file).unwrap_err().to_string();
        assert!(e.contains("listen.http") && e.contains("nowhere"), "{e}");
        std::fs::write(&file, "listen:\n  htp: 1\n").unwrap();
        let e = Settings::load(&file).unwrap_err().to_string();
        assert!(e.contains("htp"), "{e}");
    }
}

/// This replica's stable identity for Kafka static membership: the setting, else the pod
/// name. Under Kubernetes every replica reads the same settings file, so a set value that
/// does not name the pod would be claimed by all of them at once: refused.
fn kafka_instance_id(set: Option<&str>, pod: Option<&str>) -> Result<Option<String>, String> {
    let pod = pod.filter(|p| !p.is_empty());
    match (set.filter(|s| !s.is_empty()), pod) {
        (Some(set), Some(pod)) if !set.contains(pod) => Err(format!(
            "{set:?} would be the same in every replica reading this file (POD_NAME is {pod:?}); leave it unset to use the pod name, or include the pod name in it"
        )),
        (Some(set), _) => Ok(Some(set.to_owned())),
        (None, pod) => Ok(pod.map(str::to_owned)),
    }
}

#[cfg(test)]
mod instance_id_tests {
    use super::kafka_instance_id;

    #[test]
    fn a_set_instance_id_must_name_the_pod_under_kubernetes() {
        assert_eq!(kafka_instance_id(None, None), Ok(None));
        assert_eq!(
            kafka_instance_id(None, Some("gw-0")),
            Ok(Some("gw-0".into()))
        );
        assert_eq!(kafka_instance_id(Some("a"), None), Ok(Some("a".into())));
        assert_eq!(
            kafka_instance_id(Some("east-gw-0"), Some("gw-0")),
            Ok(Some("east-gw-0".into()))
        );
        assert!(kafka_instance_id(Some("fixed"), Some("gw-0")).is_err());
    }
}
