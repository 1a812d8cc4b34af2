//! The state building block: one handler per Dapr call, shared by the gRPC and HTTP
//! surfaces. Transport-specific parts (value encoding, empty-key messages) stay in them.

use super::error::ApiError;
use super::state::{Concurrency, DeleteRequest, SetRequest, StateStore, StoreError, StoredItem};
use super::{CallTimer, DaprApi};
use crate::plan::{DaprApp, KeyPrefix, StateComponent};
use bytes::Bytes;
use std::sync::Arc;
use tonic::Code;

pub(crate) const BLOCK: &str = "state";

/// One item of a save, bulk delete or transaction, as both transports decode it.
#[derive(Clone, Debug, Default)]
pub struct StateItem {
    pub key: String,
    pub value: Bytes,
    /// `value` is a decoded JSON value re-encoded (HTTP, or gRPC with `contentType:
    /// application/json`), not raw bytes: SQL stores lay the two out differently.
    pub json: bool,
    pub etag: Option<String>,
    pub concurrency: String,
    pub consistency: String,
    pub metadata: Vec<(String, String)>,
}

/// A key of a bulk get, answered with its item or its error.
#[derive(Debug)]
pub struct BulkItem {
    pub key: String,
    pub result: Result<Option<StoredItem>, String>,
}

/// An app's store for one call: the component as the plan has it, and its client.
pub(crate) struct ResolvedStore<'a> {
    pub component: &'a StateComponent,
    pub store: Arc<dyn StateStore>,
}

impl DaprApi {
    pub(crate) fn state_store<'a>(
        &self,
        app: &'a DaprApp,
        name: &str,
    ) -> Result<ResolvedStore<'a>, ApiError> {
        let app_info = || vec![("appID".to_owned(), app.app_id.clone())];
        if app.states.is_empty() {
            return Err(ApiError::rich(
                Code::FailedPrecondition,
                500,
                "ERR_STATE_STORE_NOT_CONFIGURED",
                "DAPR_STATE_NOT_CONFIGURED",
                format!("state store {name} is not configured"),
            )
            .with_http_info(app_info()));
        }
        let Some(component) = app.states.get(name) else {
            return Err(ApiError::rich(
                Code::InvalidArgument,
                400,
                "ERR_STATE_STORE_NOT_FOUND",
                "DAPR_STATE_NOT_FOUND",
                format!("state store {name} is not found"),
            )
            .with_http_info(app_info()));
        };
        let store = self.clients.state_store(component).map_err(|e| {
            ApiError::basic(
                Code::Internal,
                500,
                "ERR_STATE_STORE_NOT_CONFIGURED",
                format!("state store {name} could not be set up: {e}"),
            )
        })?;
        // The gauge shows the outcome of this store's previous call.
        self.clients.observe_store(component, &*store);
        Ok(ResolvedStore { component, store })
    }

    /// Resolves the app's store, runs `call` with it, and counts and times the call.
    async fn state_call<'a, T, Fut>(
        &'a self,
        app: &'a DaprApp,
        store: &str,
        call: impl FnOnce(ResolvedStore<'a>) -> Fut,
    ) -> Result<T, ApiError>
    where
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let timer = CallTimer::start(self, app, BLOCK);
        let result = match self.state_store(app, store) {
            Ok(s) => {
                timer.component(&s.component.id.name);
                call(s).await
            }
            Err(e) => Err(e),
        };
        timer.finish(result)
    }

    pub async fn get_state(
        &self,
        app: &DaprApp,
        store: &str,
        key: &str,
        consistency: &str,
    ) -> Result<Option<StoredItem>, ApiError> {
        self.state_call(app, store, |s| async move {
            check_consistency(consistency).map_err(|e| get_error(key, store, &e))?;
            let stored_key = stored_key(app, s.component, key)?;
            s.store
                .get(&stored_key)
                .await
                .map_err(|e| get_error(key, store, &e.to_string()))
        })
        .await
    }

    pub async fn get_bulk_state(
        &self,
        app: &DaprApp,
        store: &str,
        keys: Vec<String>,
        parallelism: usize,
    ) -> Result<Vec<BulkItem>, ApiError> {
        self.state_call(app, store, |s| async move {
            let mut stored = Vec::with_capacity(keys.len());
            for k in &keys {
                stored.push(stored_key(app, s.component, k)?);
            }
            if let Some(answer) = s.store.bulk_get(&stored).await {
                let found = answer.map_err(|e| {
                    ApiError::basic(Code::Internal, 500, "ERR_STATE_BULK_GET", e.to_string())
                })?;
                // The store's order; keys back as the app sent them.
                let sent: std::collections::HashMap<&str, &String> =
                    stored.iter().map(String::as_str).zip(&keys).collect();
                return Ok(found
                    .into_iter()
                    .map(|(stored_key, item)| BulkItem {
                        key: sent
                            .get(stored_key.as_str())
                            .map_or(stored_key.clone(), |k| (*k).clone()),
                        result: Ok(item),
                    })
                    .collect());
            }
            // Order kept, as daprd's default bulk get keeps it; `parallelism` keys at a
            // time (0: all at once).
            let limit = if parallelism == 0 {
                stored.len().max(1)
            } else {
                parallelism
            };
            let mut results = Vec::with_capacity(stored.len());
            for chunk in stored.chunks(limit) {
                let gets = chunk.iter().map(|k| {
                    let (store, k) = (s.store.clone(), k.clone());
                    async move { store.get(&k).await.map_err(|e| e.to_string()) }
                });
                results.extend(futures::future::join_all(gets).await);
            }
            Ok(keys
                .into_iter()
                .zip(results)
                .map(|(key, result)| BulkItem { key, result })
                .collect())
        })
        .await
    }

    /// SaveState: items are written independently and in parallel, as daprd does.
    pub async fn save_state(
        &self,
        app: &DaprApp,
        store: &str,
        items: Vec<StateItem>,
    ) -> Result<(), ApiError> {
        self.state_call(app, store, |s| async move {
            let mut requests = Vec::with_capacity(items.len());
            for item in &items {
                requests.push(set_request(app, s.component, item).map_err(|e| match e {
                    Prepared::Api(e) => e,
                    Prepared::Store(e) => save_error(store, &e),
                })?);
            }
            first_error(requests.into_iter().map(|r| s.store.set(r)))
                .await
                .map_err(|e| save_error(store, &e))
        })
        .await
    }

    pub async fn delete_state(
        &self,
        app: &DaprApp,
        store: &str,
        item: StateItem,
    ) -> Result<(), ApiError> {
        self.state_call(app, store, |s| async move {
            let request = delete_request(app, s.component, &item)?;
            s.store
                .delete(request)
                .await
                .map_err(|e| delete_error(&item.key, &e))
        })
        .await
    }

    /// DeleteBulkState: independent parallel deletes.
    pub async fn delete_bulk_state(
        &self,
        app: &DaprApp,
        store: &str,
        items: Vec<StateItem>,
    ) -> Result<(), ApiError> {
        self.state_call(app, store, |s| async move {
            let mut requests = Vec::with_capacity(items.len());
            for item in &items {
                requests.push(delete_request(app, s.component, item)?);
            }
            first_error(requests.into_iter().map(|r| s.store.delete(r)))
                .await
                .map_err(|e| {
                    store_error(
                        "ERR_STATE_BULK_DELETE",
                        format!("failed deleting state in state store {store}"),
                        &e,
                    )
                })
        })
        .await
    }

    /// ExecuteStateTransaction: `operations` are (`upsert` | `delete`, item).
    pub async fn execute_state_transaction(
        &self,
        app: &DaprApp,
        store: &str,
        operations: Vec<(String, StateItem)>,
    ) -> Result<(), ApiError> {
        self.state_call(app, store, |s| async move {
            let tx_error = |e: String| {
                ApiError::basic(
                    Code::Internal,
                    500,
                    "ERR_STATE_TRANSACTION",
                    format!("error while executing state transaction: {e}"),
                )
            };
            let mut ops = Vec::with_capacity(operations.len());
            for (op, item) in &operations {
                ops.push(match op.as_str() {
                    "upsert" => super::state::TransactionOp::Upsert(
                        set_request(app, s.component, item).map_err(|e| match e {
                            Prepared::Api(e) => e,
                            Prepared::Store(e) => tx_error(e.to_string()),
                        })?,
                    ),
                    "delete" => {
                        super::state::TransactionOp::Delete(delete_request(app, s.component, item)?)
                    }
                    other => {
                        return Err(ApiError::basic(
                            Code::Unimplemented,
                            400,
                            "ERR_NOT_SUPPORTED_STATE_OPERATION",
                            format!("operation type {other} not supported"),
                        ))
                    }
                });
            }
            if let Some(outbox) = &s.component.outbox {
                let write = self.publish_internal(app, outbox, &operations).await?;
                let mut i = 0;
                ops.retain(|_| {
                    i += 1;
                    !write.projections.contains(&(i - 1))
                });
                ops.extend(
                    write
                        .markers
                        .into_iter()
                        .map(super::state::TransactionOp::Upsert),
                );
            }
            if ops.is_empty() {
                return Ok(());
            }
            s.store
                .transact(ops)
                .await
                .map_err(|e| tx_error(e.to_string()))
        })
        .await
    }
}

/// Runs independent store operations in parallel (daprd's bulk save and delete are not
/// transactions) and reports the first failure.
async fn first_error(
    operations: impl Iterator<Item = impl std::future::Future<Output = Result<(), StoreError>>>,
) -> Result<(), StoreError> {
    match futures::future::join_all(operations)
        .await
        .into_iter()
        .find_map(Result::err)
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The key as daprd stores it (`GetModifiedStateKey`).
pub(crate) fn stored_key(
    app: &DaprApp,
    component: &StateComponent,
    key: &str,
) -> Result<String, ApiError> {
    // daprd's `InvalidKeyName`: the key as the BadRequest field, the store as ResourceInfo.
    let illegal = |k: &str| {
        let message = format!("input key/keyPrefix '{k}' can't contain '||'");
        ApiError::rich(
            Code::InvalidArgument,
            400,
            "ERR_MALFORMED_REQUEST",
            "DAPR_STATE_ILLEGAL_KEY",
            message.clone(),
        )
        .with_field_violation(k, &message)
        .with_resource("state", &component.id.name, "")
    };
    if key.contains("||") {
        return Err(illegal(key));
    }
    Ok(match &component.key_prefix {
        KeyPrefix::AppId => format!("{}||{key}", app.app_id),
        KeyPrefix::Name => format!("{}||{key}", component.id.name),
        KeyPrefix::Namespace => format!("{}.{}||{key}", app.namespace, app.app_id),
        KeyPrefix::None => key.to_owned(),
        KeyPrefix::Custom(p) => format!("{p}||{key}"),
    })
}

enum Prepared {
    Api(ApiError),
    Store(StoreError),
}

impl From<ApiError> for Prepared {
    fn from(e: ApiError) -> Self {
        Prepared::Api(e)
    }
}

fn set_request(
    app: &DaprApp,
    component: &StateComponent,
    item: &StateItem,
) -> Result<SetRequest, Prepared> {
    let key = stored_key(app, component, &item.key)?;
    let concurrency = Concurrency::parse(&item.concurrency)
        .map_err(|e| Prepared::Store(StoreError::Failed(e)))?;
    check_consistency(&item.consistency).map_err(|e| Prepared::Store(StoreError::Failed(e)))?;
    let ttl = match super::metadata_value(&item.metadata, "ttlInSeconds") {
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            Prepared::Store(StoreError::Failed(format!(
                "failed to parse ttlInSeconds: strconv.ParseInt: parsing {v:?}: invalid syntax"
            )))
        })?),
        None => component.default_ttl,
    };
    Ok(SetRequest {
        key,
        value: item.value.clone(),
        json: item.json,
        etag: item.etag.clone().filter(|e| !e.is_empty()),
        concurrency,
        ttl,
    })
}

fn delete_request(
    app: &DaprApp,
    component: &StateComponent,
    item: &StateItem,
) -> Result<DeleteRequest, ApiError> {
    Ok(DeleteRequest {
        key: stored_key(app, component, &item.key)?,
        etag: item.etag.clone().filter(|e| !e.is_empty()),
    })
}

fn check_consistency(c: &str) -> Result<(), String> {
    match c {
        "" | "strong" | "eventual" => Ok(()),
        other => Err(format!("unrecognized consistency model '{other}'")),
    }
}

/// A store failure as daprd reports it under `error_code`: an ETag mismatch is Aborted /
/// 409, an invalid ETag InvalidArgument / 400, anything else Internal / 500.
fn store_error(error_code: &'static str, prefix: String, e: &StoreError) -> ApiError {
    let (code, status, message) = match e {
        StoreError::EtagMismatch(inner) => (
            Code::Aborted,
            409,
            format!("{prefix}: possible etag mismatch. error from state store: {inner}"),
        ),
        StoreError::EtagInvalid(inner) => (
            Code::InvalidArgument,
            400,
            format!("{prefix}: invalid etag value: {inner}"),
        ),
        other => (Code::Internal, 500, format!("{prefix}: {other}")),
    };
    ApiError::basic(code, status, error_code, message)
}

fn save_error(store: &str, e: &StoreError) -> ApiError {
    store_error(
        "ERR_STATE_SAVE",
        format!("failed saving state in state store {store}"),
        e,
    )
}

fn delete_error(key: &str, e: &StoreError) -> ApiError {
    store_error(
        "ERR_STATE_DELETE",
        format!("failed deleting state with key {key}"),
        e,
    )
}

fn get_error(key: &str, store: &str, e: &str) -> ApiError {
    ApiError::basic(
        Code::Internal,
        500,
        "ERR_STATE_GET",
        format!("fail to get {key} from state store {store}: {e}"),
    )
}
