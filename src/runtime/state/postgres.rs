//! `state.postgresql` in both of Dapr's layouts, so daprd and fngate share tables:
//! v1 (`value jsonb`, `isbinary`, the ETag is the row's `xmin`) and v2 (`value bytea`, a
//! random uuid `etag`). Tables are created on first use by Dapr's migrations, under the
//! same row lock in the metadata table and recorded with the same version row, so a
//! daprd (or another fngate) migrating at the same moment waits its turn.

use super::sql::{self, bytes_column, json_column, read_json_column, ttl_seconds};
use super::{
    Concurrency, DeleteRequest, SetRequest, StateStore, StoreError, StoredItem, TransactionOp,
};
use crate::plan::{PostgresLayout, PostgresSettings, PostgresTls};
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

pub const FEATURES: &[&str] = &["ETAG", "TRANSACTIONAL", "TTL"];

/// The statements of one layout on one table, built once.
struct Statements {
    get: String,
    bulk_get: String,
    upsert: String,
    insert_first_write: String,
    update_with_etag: String,
    delete: String,
    delete_with_etag: String,
    last_cleanup: String,
    delete_expired: String,
}

impl Statements {
    fn new(s: &PostgresSettings) -> Statements {
        let (t, m) = (&s.table, &s.metadata_table);
        match s.layout {
            // $1 key, $2 value (JSON text), $3 isbinary, $4 TTL seconds (0: none), $5 xmin.
            PostgresLayout::V1 => {
                let exp = "CASE WHEN $4::bigint > 0 THEN CURRENT_TIMESTAMP + $4::bigint * interval '1 second' END";
                let live = "(expiredate IS NULL OR expiredate >= CURRENT_TIMESTAMP)";
                let columns = "value::text, isbinary, xmin::text, floor(extract(epoch FROM expiredate))::bigint";
                let upsert = format!(
                    "INSERT INTO {t} AS t (key, value, isbinary, expiredate) VALUES ($1, $2::text::jsonb, $3, {exp}) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, isbinary = excluded.isbinary, \
                     updatedate = CURRENT_TIMESTAMP, expiredate = {exp}"
                );
                Statements {
                    get: format!("SELECT {columns} FROM {t} WHERE key = $1 AND {live}"),
                    bulk_get: format!("SELECT key, {columns} FROM {t} WHERE key = ANY($1) AND {live}"),
                    insert_first_write: format!(
                        "{upsert} WHERE (t.expiredate IS NOT NULL AND t.expiredate < CURRENT_TIMESTAMP)"
                    ),
                    upsert,
                    update_with_etag: format!(
                        "UPDATE {t} SET value = $2::text::jsonb, isbinary = $3, updatedate = CURRENT_TIMESTAMP, \
                         expiredate = {exp} WHERE key = $1 AND xmin = $5::text::xid \
                         AND (expiredate IS NULL OR expiredate > CURRENT_TIMESTAMP)"
                    ),
                    delete: format!("DELETE FROM {t} WHERE key = $1"),
                    delete_with_etag: format!("DELETE FROM {t} WHERE key = $1 AND xmin = $2::text::xid"),
                    last_cleanup: last_cleanup(m, "last-cleanup"),
                    delete_expired: format!(
                        "DELETE FROM {t} WHERE expiredate IS NOT NULL AND expiredate < now()"
                    ),
                }
            }
            // $1 key, $2 value (bytea), $3 TTL seconds, $4 etag.
            PostgresLayout::V2 => {
                let exp =
                    "CASE WHEN $3::bigint > 0 THEN now() + $3::bigint * interval '1 second' END";
                let live = "(expires_at IS NULL OR expires_at >= now())";
                let columns = "value, etag::text, floor(extract(epoch FROM expires_at))::bigint";
                let upsert = format!(
                    "INSERT INTO {t} AS t (key, value, etag, expires_at) VALUES ($1, $2, gen_random_uuid(), {exp}) \
                     ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = now(), etag = gen_random_uuid(), \
                     expires_at = {exp}"
                );
                Statements {
                    get: format!("SELECT {columns} FROM {t} WHERE key = $1 AND {live}"),
                    bulk_get: format!("SELECT key, {columns} FROM {t} WHERE key = ANY($1) AND {live}"),
                    insert_first_write: format!(
                        "{upsert} WHERE (t.expires_at IS NOT NULL AND t.expires_at < now())"
                    ),
                    upsert,
                    update_with_etag: format!(
                        "UPDATE {t} SET value = $2, updated_at = now(), etag = gen_random_uuid(), expires_at = {exp} \
                         WHERE key = $1 AND etag = $4::text::uuid AND {live}"
                    ),
                    delete: format!("DELETE FROM {t} WHERE key = $1"),
                    delete_with_etag: format!("DELETE FROM {t} WHERE key = $1 AND etag = $2::text::uuid"),
                    last_cleanup: last_cleanup(m, &format!("last-cleanup-state-v2-{}", s.table_prefix)),
                    delete_expired: format!(
                        "DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at < now()"
                    ),
                }
            }
        }
    }
}

/// Records this cleanup in the metadata table only if the last one (by any process) is at
/// least `$1` ms old: one row updated means "go ahead".
fn last_cleanup(metadata_table: &str, key: &str) -> String {
    format!(
        "INSERT INTO {metadata_table} (key, value) VALUES ('{key}', now()::text) \
         ON CONFLICT (key) DO UPDATE SET value = now()::text \
         WHERE (EXTRACT('epoch' FROM now() - {metadata_table}.value::timestamp with time zone) * 1000)::bigint > $1"
    )
}

pub struct PostgresStore {
    settings: PostgresSettings,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    pool: Pool,
    sql: Statements,
    migrated: tokio::sync::OnceCell<()>,
    connected: AtomicBool,
}

impl PostgresStore {
    /// Connects lazily: the tables are made (or checked) by the first call, and a
    /// database that is down gives errors until it is back.
    pub fn new(settings: &PostgresSettings) -> Result<Arc<PostgresStore>, String> {
        let mut text = String::new();
        for (k, v) in &settings.connection {
            let quoted = v.replace('\\', "\\\\").replace('\'', "\\'");
            text.push_str(&format!("{k}='{quoted}' "));
        }
        let mut config: tokio_postgres::Config = text.parse().map_err(|e| format!("{e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(settings.timeout);
        }
        config.ssl_mode(match settings.tls {
            PostgresTls::Disable => SslMode::Disable,
            PostgresTls::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let tls = super::pg_tls::connector(&settings.tls)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // A connection the server closed (a restart) is dropped when taken, not used.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_conns)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| e.to_string())?;
        let store = Arc::new(PostgresStore {
            sql: Statements::new(settings),
            settings: settings.clone(),
            config,
            tls,
            pool,
            migrated: tokio::sync::OnceCell::new(),
            connected: AtomicBool::new(false),
        });
        sql::spawn_cleanup(
            &store,
            settings.cleanup_interval,
            |s: Arc<PostgresStore>, every| async move { s.cleanup(every).await },
        );
        Ok(store)
    }

    /// A pooled connection, the tables made first (callers bound it with `timed`).
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.migrated.get_or_try_init(|| self.migrate()).await?;
        self.pool
            .get()
            .await
            .map_err(|e| unavailable(e.to_string()))
    }

    /// Runs a call under the store's timeout, noting whether the database answered.
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        sql::timed(self.settings.timeout, &self.connected, f).await
    }

    /// Dapr's migrations: the metadata table, a lock row held `FOR UPDATE` on its own
    /// connection while the state table is brought to the current version.
    async fn migrate(&self) -> Result<(), StoreError> {
        let m = &self.settings.metadata_table;
        let pool = self
            .pool
            .get()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        for attempt in 0..3 {
            match pool
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {m} (key text NOT NULL PRIMARY KEY, value text NOT NULL)"
                ))
                .await
            {
                Ok(()) => break,
                // Two processes creating it at once: one gets a unique violation on the type.
                Err(e) if is_unique_violation(&e) && attempt < 2 => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(e) => return Err(pg_error("failed to create metadata table", e)),
            }
        }
        pool.execute(
            &format!(
                "INSERT INTO {m} (key, value) VALUES ($1, 'lock') ON CONFLICT (key) DO NOTHING"
            ),
            &[&"lock"],
        )
        .await
        .map_err(|e| pg_error("failed to ensure lock row 'lock' exists", e))?;

        let (mut lock, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let connection = tokio::spawn(connection);
        let result = async {
            let tx = lock.transaction().await.map_err(|e| pg_error("failed to begin transaction", e))?;
            tx.query_one(&format!("SELECT value FROM {m} WHERE key = $1 FOR UPDATE"), &[&"lock"])
                .await
                .map_err(|e| pg_error("failed to acquire migration lock", e))?;
            let version_key = match self.settings.layout {
                PostgresLayout::V1 => "migrations".to_owned(),
                PostgresLayout::V2 => format!("migrations-state-v2-{}", self.settings.table_prefix),
            };
            let level = match pool
                .query_opt(&format!("SELECT value FROM {m} WHERE key = $1"), &[&version_key])
                .await
                .map_err(|e| pg_error("failed to read migration level", e))?
            {
                None => 0,
                Some(row) => {
                    let v: String = row.get(0);
                    v.parse::<usize>().map_err(|_| {
                        StoreError::Failed(format!("invalid migration level found in metadata table: {v}"))
                    })?
                }
            };
            let steps = self.migrations();
            for (i, step) in steps.iter().enumerate().skip(level) {
                tracing::info!(table = %self.settings.table, migration = i + 1, "state.postgresql: migrating");
                match pool.batch_execute(step).await {
                    Ok(()) => {}
                    Err(e) if i == 0 && is_unique_violation(&e) => {}
                    Err(e) => return Err(pg_error(&format!("failed to perform migration {i}"), e)),
                }
                pool.execute(
                    &format!("INSERT INTO {m} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2"),
                    &[&version_key, &(i + 1).to_string()],
                )
                .await
                .map_err(|e| pg_error("failed to update migration level in metadata table", e))?;
            }
            // The lock's value never changes: rolling back releases it.
            tx.rollback().await.map_err(|e| pg_error("failed to release the migration lock", e))
        }
        .await;
        drop(lock);
        let _ = connection.await;
        result
    }

    /// Dapr's migration steps for the layout, in order; the version row counts them.
    fn migrations(&self) -> Vec<String> {
        let t = &self.settings.table;
        let index = t.rsplit('.').next().unwrap_or(t);
        let row_id = format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS row_id bigint GENERATED ALWAYS AS IDENTITY; \
             CREATE UNIQUE INDEX IF NOT EXISTS {index}_row_id_uidx ON {t} (row_id)"
        );
        match self.settings.layout {
            PostgresLayout::V1 => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (key text NOT NULL PRIMARY KEY, value jsonb NOT NULL, \
                     isbinary boolean NOT NULL, insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(), \
                     updatedate TIMESTAMP WITH TIME ZONE NULL)"
                ),
                format!("ALTER TABLE {t} ADD expiredate TIMESTAMP WITH TIME ZONE"),
                row_id,
            ],
            PostgresLayout::V2 => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (key text NOT NULL PRIMARY KEY, value bytea NOT NULL, \
                     etag uuid NOT NULL DEFAULT gen_random_uuid(), \
                     created_at timestamp with time zone NOT NULL DEFAULT now(), \
                     updated_at timestamp with time zone, expires_at timestamp with time zone); \
                     CREATE INDEX ON {t} (expires_at)"
                ),
                row_id,
            ],
        }
    }

    async fn cleanup(&self, interval: std::time::Duration) -> Result<u64, StoreError> {
        let since_ms = interval.as_millis() as i64 - 100;
        self.timed(async {
            let client = self.client().await?;
            let go = client
                .execute(&self.sql.last_cleanup, &[&since_ms])
                .await
                .map_err(|e| pg_error("error updating last cleanup time", e))?;
            if go == 0 {
                return Ok(0);
            }
            client
                .execute(&self.sql.delete_expired, &[])
                .await
                .map_err(|e| pg_error("failed to execute query", e))
        })
        .await
    }

    /// An ETag as the statements take it: v1's `xmin` is a uint32 (anything else is an
    /// invalid ETag, 400); v2's a uuid (a malformed one is a mismatch, 409, as in Dapr).
    fn etag_param(&self, e: &str) -> Result<String, StoreError> {
        match self.settings.layout {
            PostgresLayout::V1 => e.parse::<u32>().map(|n| n.to_string()).map_err(|err| {
                StoreError::EtagInvalid(format!("strconv.ParseUint: parsing {e:?}: {err}"))
            }),
            PostgresLayout::V2 => sql::parse_uuid(e)
                .ok_or_else(|| StoreError::EtagMismatch(format!("invalid UUID format: {e:?}"))),
        }
    }

    async fn set_on(&self, c: &impl GenericClient, request: &SetRequest) -> Result<(), StoreError> {
        let ttl = ttl_seconds(request)?;
        let etag = request
            .etag
            .as_deref()
            .map(|e| self.etag_param(e))
            .transpose()?;
        let statement = match (&etag, request.concurrency) {
            (Some(_), _) => &self.sql.update_with_etag,
            (None, Concurrency::FirstWrite) => &self.sql.insert_first_write,
            (None, _) => &self.sql.upsert,
        };
        let stmt = c
            .prepare_cached(statement)
            .await
            .map_err(|e| pg_error("", e))?;
        let rows = match self.settings.layout {
            PostgresLayout::V1 => {
                let (value, isbinary) = json_column(request)?;
                match &etag {
                    Some(e) => {
                        c.execute(&stmt, &[&request.key, &value, &isbinary, &ttl, e])
                            .await
                    }
                    None => {
                        c.execute(&stmt, &[&request.key, &value, &isbinary, &ttl])
                            .await
                    }
                }
            }
            PostgresLayout::V2 => {
                let value = bytes_column(request)?;
                let value: &[u8] = &value;
                match &etag {
                    Some(e) => c.execute(&stmt, &[&request.key, &value, &ttl, e]).await,
                    None => c.execute(&stmt, &[&request.key, &value, &ttl]).await,
                }
            }
        }
        .map_err(|e| pg_error("", e))?;
        match (rows, &etag) {
            (1, _) => Ok(()),
            (_, Some(_)) => Err(StoreError::EtagMismatch("possible etag mismatch".into())),
            // First-write against a live row: Postgres reports a plain failure (500).
            (_, None) => Err(StoreError::Failed("no item was updated".into())),
        }
    }

    async fn delete_on(
        &self,
        c: &impl GenericClient,
        request: &DeleteRequest,
    ) -> Result<(), StoreError> {
        let rows = match &request.etag {
            None => {
                let stmt = c
                    .prepare_cached(&self.sql.delete)
                    .await
                    .map_err(|e| pg_error("", e))?;
                c.execute(&stmt, &[&request.key]).await
            }
            Some(e) => {
                let etag = self.etag_param(e)?;
                let stmt = c
                    .prepare_cached(&self.sql.delete_with_etag)
                    .await
                    .map_err(|e| pg_error("", e))?;
                c.execute(&stmt, &[&request.key, &etag]).await
            }
        }
        .map_err(|e| pg_error("", e))?;
        if rows != 1 && request.etag.is_some() {
            return Err(StoreError::EtagMismatch("possible etag mismatch".into()));
        }
        Ok(())
    }

    fn row_item(&self, row: &tokio_postgres::Row, first: usize) -> Result<StoredItem, StoreError> {
        match self.settings.layout {
            PostgresLayout::V1 => {
                let value: String = row.get(first);
                let data = read_json_column(value.into_bytes(), row.get(first + 1))?;
                Ok(sql::item(data, row.get(first + 2), row.get(first + 3)))
            }
            PostgresLayout::V2 => {
                let value: Vec<u8> = row.get(first);
                Ok(sql::item(
                    Bytes::from(value),
                    row.get(first + 1),
                    row.get(first + 2),
                ))
            }
        }
    }

    /// Bulk get with one `key = ANY($1)`: found rows in the database's order, then the
    /// missing keys, as Dapr's component answers.
    pub async fn bulk_get(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Option<StoredItem>)>, StoreError> {
        self.timed(async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(&self.sql.bulk_get)
                .await
                .map_err(|e| pg_error("", e))?;
            let rows = c
                .query(&stmt, &[&keys])
                .await
                .map_err(|e| pg_error("", e))?;
            let mut out = Vec::with_capacity(keys.len());
            for row in &rows {
                let key: String = row.get(0);
                out.push((key, Some(self.row_item(row, 1)?)));
            }
            sql::append_missing(&mut out, keys);
            Ok(out)
        })
        .await
    }
}

fn unavailable(e: String) -> StoreError {
    StoreError::Unavailable(e)
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// A database's own error (it answered) is `Failed`; a lost or refused connection is
/// `Unavailable`.
fn pg_error(context: &str, e: tokio_postgres::Error) -> StoreError {
    let text = match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    };
    let text = if context.is_empty() {
        text
    } else {
        format!("{context}: {text}")
    };
    if e.as_db_error().is_some() {
        StoreError::Failed(text)
    } else {
        StoreError::Unavailable(text)
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError> {
        self.timed(async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(&self.sql.get)
                .await
                .map_err(|e| pg_error("", e))?;
            match c
                .query_opt(&stmt, &[&key])
                .await
                .map_err(|e| pg_error("", e))?
            {
                Some(row) => self.row_item(&row, 0).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn set(&self, request: SetRequest) -> Result<(), StoreError> {
        self.timed(async {
            let c = self.client().await?;
            self.set_on(&c, &request).await
        })
        .await
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StoreError> {
        self.timed(async {
            let c = self.client().await?;
            self.delete_on(&c, &request).await
        })
        .await
    }

    /// One operation runs alone; several run in one transaction that rolls back on the
    /// first error.
    async fn transact(&self, ops: Vec<TransactionOp>) -> Result<(), StoreError> {
        self.timed(async {
            let mut c = self.client().await?;
            if let [op] = &ops[..] {
                return match op {
                    TransactionOp::Upsert(r) => self.set_on(&c, r).await,
                    TransactionOp::Delete(r) => self.delete_on(&c, r).await,
                };
            }
            let tx = c
                .transaction()
                .await
                .map_err(|e| pg_error("failed to begin transaction", e))?;
            for op in &ops {
                match op {
                    TransactionOp::Upsert(r) => self.set_on(&tx, r).await?,
                    TransactionOp::Delete(r) => self.delete_on(&tx, r).await?,
                }
            }
            tx.commit()
                .await
                .map_err(|e| pg_error("failed to commit transaction", e))
        })
        .await
    }

    async fn bulk_get(
        &self,
        keys: &[String],
    ) -> Option<Result<Vec<(String, Option<StoredItem>)>, StoreError>> {
        Some(PostgresStore::bulk_get(self, keys).await)
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
