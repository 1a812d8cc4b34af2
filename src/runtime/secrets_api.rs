//! The secrets building block: a key of one of the app's secret stores, or all of them,
//! filtered by the app's secret scopes. Values never reach logs, metrics or `/routes`.

use super::error::ApiError;
use super::{CallTimer, DaprApi};
use crate::plan::{DaprApp, SecretBackend, SecretStoreComponent};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::Code;

/// One secret: its keys and values (a single-valued store answers `{key: value}`).
pub type SecretData = BTreeMap<String, String>;

/// A local secrets file larger than this is refused, not read.
const MAX_SECRETS_FILE: u64 = 1024 * 1024;

fn store_not_found(store: &str) -> ApiError {
    ApiError::basic(
        Code::InvalidArgument,
        401,
        "ERR_SECRET_STORE_NOT_FOUND",
        format!("failed finding secret store with key {store}"),
    )
}

fn denied(key: &str, store: &str) -> ApiError {
    ApiError::basic(
        Code::PermissionDenied,
        403,
        "ERR_PERMISSION_DENIED",
        format!("access denied by policy to get {key:?} from {store:?}"),
    )
}

impl DaprApi {
    fn secret_store<'a>(
        &self,
        app: &'a DaprApp,
        store: &str,
    ) -> Result<&'a Arc<SecretStoreComponent>, ApiError> {
        if app.secret_stores.is_empty() {
            return Err(ApiError::basic(
                Code::FailedPrecondition,
                500,
                "ERR_SECRET_STORES_NOT_CONFIGURED",
                "secret store is not configured".into(),
            ));
        }
        app.secret_stores
            .get(store)
            .ok_or_else(|| store_not_found(store))
    }

    fn secret_allowed(app: &DaprApp, store: &str, key: &str) -> bool {
        app.secret_scopes
            .get(store)
            .is_none_or(|scope| scope.allows(key))
    }

    /// GetSecret: one key of `store`.
    pub async fn get_secret(
        &self,
        app: &DaprApp,
        store: &str,
        key: &str,
        metadata: &[(String, String)],
    ) -> Result<SecretData, ApiError> {
        let timer = CallTimer::start(self, app, "secrets");
        let result = async {
            let component = self.secret_store(app, store)?;
            timer.component(&component.id.name);
            if !Self::secret_allowed(app, store, key) {
                return Err(denied(key, store));
            }
            self.read_secret(&component.backend, key, metadata)
                .await
                .map_err(|e| {
                    ApiError::basic(
                        Code::Internal,
                        500,
                        "ERR_SECRET_GET",
                        format!(
                            "failed getting secret with key {key} from secret store {store}: {e}"
                        ),
                    )
                })
        }
        .await;
        timer.finish(result)
    }

    /// GetBulkSecret: every secret of `store` the app's scopes allow.
    pub async fn get_bulk_secret(
        &self,
        app: &DaprApp,
        store: &str,
        metadata: &[(String, String)],
    ) -> Result<BTreeMap<String, SecretData>, ApiError> {
        let timer = CallTimer::start(self, app, "secrets");
        let result = async {
            let component = self.secret_store(app, store)?;
            timer.component(&component.id.name);
            let mut all = self
                .read_all_secrets(&component.backend, metadata)
                .await
                .map_err(|e| {
                    ApiError::basic(
                        Code::Internal,
                        500,
                        "ERR_SECRET_GET",
                        format!("failed getting secrets from secret store {store}: {e}"),
                    )
                })?;
            all.retain(|key, _| Self::secret_allowed(app, store, key));
            Ok(all)
        }
        .await;
        timer.finish(result)
    }

    /// The Secrets of `namespace` on the API server; `None` from files.
    async fn kube_secrets(
        &self,
        namespace: &str,
    ) -> Result<Option<kube::Api<k8s_openapi::api::core::v1::Secret>>, String> {
        Ok(self
            .kube_client()
            .await?
            .map(|client| kube::Api::namespaced(client, namespace)))
    }

    async fn read_secret(
        &self,
        backend: &SecretBackend,
        key: &str,
        metadata: &[(String, String)],
    ) -> Result<SecretData, String> {
        match backend {
            SecretBackend::LocalFile { .. } => {
                let mut all = read_secrets_file(backend).await?;
                all.remove(key)
                    .ok_or_else(|| format!("secret {key} not found"))
            }
            // As daprd: an unset variable is an empty value, not an error; DAPR_* and
            // APP_API_TOKEN are never read.
            SecretBackend::LocalEnv { prefix } => {
                let name = format!("{prefix}{key}");
                let value = if env_allowed(&name) {
                    std::env::var(&name).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(BTreeMap::from([(key.to_owned(), value)]))
            }
            SecretBackend::Kubernetes { namespace, catalog } => {
                check_namespace(namespace, metadata)?;
                match self.kube_secrets(namespace).await? {
                    Some(api) => {
                        let secret = api.get(key).await.map_err(kube_error)?;
                        Ok(secret_data(secret.data.unwrap_or_default()))
                    }
                    None => catalog
                        .iter()
                        .find(|s| s.metadata.name == key)
                        .map(|s| catalog_secret_data(s))
                        .ok_or_else(|| format!("secrets \"{key}\" not found")),
                }
            }
        }
    }

    async fn read_all_secrets(
        &self,
        backend: &SecretBackend,
        metadata: &[(String, String)],
    ) -> Result<BTreeMap<String, SecretData>, String> {
        match backend {
            SecretBackend::LocalFile { .. } => read_secrets_file(backend).await,
            SecretBackend::LocalEnv { prefix } => Ok(std::env::vars()
                .filter(|(name, _)| name.len() > prefix.len() && name.starts_with(prefix.as_str()))
                .filter(|(name, _)| env_allowed(name))
                .map(|(name, value)| {
                    let key = name[prefix.len()..].to_owned();
                    (key.clone(), BTreeMap::from([(key, value)]))
                })
                .collect()),
            SecretBackend::Kubernetes { namespace, catalog } => {
                check_namespace(namespace, metadata)?;
                match self.kube_secrets(namespace).await? {
                    Some(api) => {
                        let list = api.list(&Default::default()).await.map_err(kube_error)?;
                        Ok(list
                            .items
                            .into_iter()
                            .map(|s| {
                                (
                                    s.metadata.name.unwrap_or_default(),
                                    secret_data(s.data.unwrap_or_default()),
                                )
                            })
                            .collect())
                    }
                    None => Ok(catalog
                        .iter()
                        .map(|s| (s.metadata.name.clone(), catalog_secret_data(s)))
                        .collect()),
                }
            }
        }
    }
}

fn env_allowed(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper != "APP_API_TOKEN" && !upper.starts_with("DAPR_")
}

/// The Kubernetes store reads the app's own namespace: a `namespace` metadata naming
/// another one is refused (daprd would read it with its own service account).
fn check_namespace(namespace: &str, metadata: &[(String, String)]) -> Result<(), String> {
    match super::metadata_value(metadata, "namespace") {
        Some(ns) if !ns.is_empty() && ns != namespace => Err(format!(
            "namespace {ns:?} is not the app's ({namespace}): an app reads its own namespace's Secrets"
        )),
        _ => Ok(()),
    }
}

fn kube_error(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn secret_data(data: BTreeMap<String, k8s_openapi::ByteString>) -> SecretData {
    data.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

fn catalog_secret_data(secret: &crate::api::Secret) -> SecretData {
    let mut out: SecretData = secret
        .data
        .iter()
        .map(|(k, v)| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .unwrap_or_default();
            (k.clone(), String::from_utf8_lossy(&decoded).into_owned())
        })
        .collect();
    out.extend(secret.string_data.clone());
    out
}

/// A `secretstores.local.file` JSON file, read at each call (so an edit is seen at once),
/// as daprd flattens it.
async fn read_secrets_file(
    backend: &SecretBackend,
) -> Result<BTreeMap<String, SecretData>, String> {
    let SecretBackend::LocalFile {
        path,
        nested_separator,
        multi_valued,
    } = backend
    else {
        unreachable!("called for a local file store");
    };
    let len = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_SECRETS_FILE {
        return Err(format!(
            "{}: {len} bytes, more than a secrets file may have ({MAX_SECRETS_FILE})",
            path.display()
        ));
    }
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    if *multi_valued {
        for (k, v) in json {
            let data = match v {
                serde_json::Value::Object(o) => {
                    let mut flat = BTreeMap::new();
                    flatten(
                        &mut flat,
                        &mut Vec::new(),
                        &serde_json::Value::Object(o),
                        nested_separator,
                    );
                    flat
                }
                other => BTreeMap::from([(k.clone(), scalar(&other))]),
            };
            out.insert(k, data);
        }
    } else {
        let mut flat = BTreeMap::new();
        flatten(
            &mut flat,
            &mut Vec::new(),
            &serde_json::Value::Object(json),
            nested_separator,
        );
        for (k, v) in flat {
            out.insert(k.clone(), BTreeMap::from([(k, v)]));
        }
    }
    Ok(out)
}

fn flatten(
    out: &mut BTreeMap<String, String>,
    path: &mut Vec<String>,
    value: &serde_json::Value,
    separator: &str,
) {
    match value {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                path.push(k.clone());
                flatten(out, path, v, separator);
                path.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(i.to_string());
                flatten(out, path, v, separator);
                path.pop();
            }
        }
        other => {
            out.insert(path.join(separator), scalar(other));
        }
    }
}

/// A scalar as text: strings as they are, numbers and booleans as JSON writes them.
fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_secrets_file_is_flattened_as_daprd_does() {
        let mut flat = BTreeMap::new();
        let v = serde_json::json!({"db": {"user": "u", "ports": [5432, 5433]}, "token": "t"});
        flatten(&mut flat, &mut Vec::new(), &v, ":");
        assert_eq!(flat["db:user"], "u");
        assert_eq!(flat["db:ports:1"], "5433");
        assert_eq!(flat["token"], "t");
    }
}
