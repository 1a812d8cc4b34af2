//! State stores behind one trait. Keys arrive already prefixed (`<app-id>||<key>`); values
//! are the bytes daprd would hand its component (raw on gRPC, re-encoded JSON on HTTP),
//! so each backend only has to lay them out as Dapr's component for it does.

mod mysql;
mod pg_tls;
mod postgres;
mod redis;
mod sql;

pub use self::mysql::MysqlStore;
pub use self::postgres::PostgresStore;
pub use self::redis::RedisStore;

use crate::plan::StateBackend;

/// The Dapr feature names a backend reports, for the metadata API (known without a
/// client: clients are made on first use).
pub fn features(backend: &StateBackend) -> &'static [&'static str] {
    match backend {
        StateBackend::Redis(_) => self::redis::FEATURES,
        StateBackend::Postgres(_) => self::postgres::FEATURES,
        StateBackend::Mysql(_) => self::mysql::FEATURES,
    }
}

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    #[default]
    Unspecified,
    FirstWrite,
    LastWrite,
}

impl Concurrency {
    /// daprd's option strings; anything else is rejected like the stores do.
    pub fn parse(s: &str) -> Result<Concurrency, String> {
        match s {
            "" => Ok(Concurrency::Unspecified),
            "first-write" => Ok(Concurrency::FirstWrite),
            "last-write" => Ok(Concurrency::LastWrite),
            other => Err(format!("unrecognized concurrency model '{other}'")),
        }
    }
}

/// One write, as the store receives it.
#[derive(Clone, Debug)]
pub struct SetRequest {
    pub key: String,
    pub value: Bytes,
    /// `value` is JSON that daprd would hold as a decoded value (HTTP saves, gRPC saves
    /// with `contentType: application/json`); otherwise raw bytes. Redis stores both alike;
    /// the SQL stores mark raw bytes `isbinary` (base64) and re-encode JSON as Go does.
    pub json: bool,
    /// Present only when non-empty.
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    /// `ttlInSeconds`: > 0 expires, <= 0 removes an expiry, `None` leaves it.
    pub ttl: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<String>,
}

#[derive(Clone, Debug)]
pub enum TransactionOp {
    Upsert(SetRequest),
    Delete(DeleteRequest),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredItem {
    pub data: Bytes,
    pub etag: Option<String>,
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("{0}")]
    EtagMismatch(String),
    #[error("{0}")]
    EtagInvalid(String),
    /// The store could not be reached or answered in time.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

#[async_trait]
pub trait StateStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError>;
    async fn set(&self, request: SetRequest) -> Result<(), StoreError>;
    async fn delete(&self, request: DeleteRequest) -> Result<(), StoreError>;
    /// Dapr's `Multi`: the store's own transaction semantics.
    async fn transact(&self, ops: Vec<TransactionOp>) -> Result<(), StoreError>;
    /// A bulk get in one query, answered in the store's own order (found rows first, then
    /// the missing keys); `None`: the store has none, and each key is read on its own.
    async fn bulk_get(
        &self,
        _keys: &[String],
    ) -> Option<Result<Vec<(String, Option<StoredItem>)>, StoreError>> {
        None
    }
    /// 1 while the last command reached the store.
    fn connected(&self) -> bool;
}
