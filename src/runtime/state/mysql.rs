//! `state.mysql` (MySQL and MariaDB) in Dapr's layout: `id`, `value JSON` (raw bytes as
//! a base64 JSON string with `isbinary`), a random uuid `eTag` replaced on every write,
//! `expiredate`. The database, tables and `row_id` are created on first use as Dapr's
//! component creates them (each step safe to run twice at once).

use super::sql::{self, json_column, read_json_column, ttl_seconds};
use super::{
    Concurrency, DeleteRequest, SetRequest, StateStore, StoreError, StoredItem, TransactionOp,
};
use crate::plan::{MysqlSettings, MysqlTls};
use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Params, Pool, Row, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const FEATURES: &[&str] = &["ETAG", "TRANSACTIONAL", "TTL"];

/// Expiry from a TTL parameter given twice (seconds; 0 = none).
const EXPIRES: &str = "IF(? > 0, CURRENT_TIMESTAMP + INTERVAL ? SECOND, NULL)";
const LIVE: &str = "(expiredate IS NULL OR expiredate > CURRENT_TIMESTAMP)";

struct Statements {
    get: String,
    replace: String,
    insert_first_write: String,
    update_with_etag: String,
    delete: String,
    delete_with_etag: String,
    last_cleanup: String,
    delete_expired: String,
}

impl Statements {
    fn new(s: &MysqlSettings) -> Statements {
        let (t, m) = (&s.table, &s.metadata_table);
        Statements {
            get: format!(
                "SELECT value, eTag, isbinary, UNIX_TIMESTAMP(expiredate) FROM {t} WHERE id = ? AND {LIVE}"
            ),
            replace: format!(
                "REPLACE INTO {t} (id, value, eTag, isbinary, expiredate) VALUES (?, ?, ?, ?, {EXPIRES})"
            ),
            // Inserts only if no live row exists (an expired one not yet cleaned up is
            // replaced): zero rows means first-write lost.
            insert_first_write: format!(
                "REPLACE INTO {t} (id, value, isbinary, eTag, expiredate) WITH a AS (SELECT ? AS id, ? AS value, \
                 ? AS isbinary, ? AS eTag, {EXPIRES} AS expiredate WHERE NOT EXISTS \
                 (SELECT 1 FROM {t} WHERE id = ? AND {LIVE})) SELECT * FROM a"
            ),
            update_with_etag: format!(
                "UPDATE {t} SET value = ?, eTag = ?, isbinary = ?, expiredate = {EXPIRES} \
                 WHERE id = ? AND eTag = ? AND {LIVE}"
            ),
            delete: format!("DELETE FROM {t} WHERE id = ?"),
            delete_with_etag: format!("DELETE FROM {t} WHERE id = ? AND eTag = ?"),
            last_cleanup: format!(
                "INSERT INTO {m} (id, value) VALUES ('last-cleanup', CURRENT_TIMESTAMP) \
                 ON DUPLICATE KEY UPDATE \
                 value = IF(CURRENT_TIMESTAMP > DATE_ADD(value, INTERVAL ?*1000 MICROSECOND), CURRENT_TIMESTAMP, value)"
            ),
            delete_expired: format!(
                "DELETE FROM {t} WHERE expiredate IS NOT NULL AND expiredate <= CURRENT_TIMESTAMP"
            ),
        }
    }
}

pub struct MysqlStore {
    settings: MysqlSettings,
    /// Connects without a database, to create `schemaName`.
    server: Opts,
    pool: Pool,
    sql: Statements,
    ready: tokio::sync::OnceCell<()>,
    connected: AtomicBool,
}

impl MysqlStore {
    pub fn new(settings: &MysqlSettings) -> Result<Arc<MysqlStore>, String> {
        let mut builder = OptsBuilder::default()
            .ip_or_hostname(settings.host.clone())
            .tcp_port(settings.port)
            .user(Some(settings.user.clone()))
            .pass(settings.password.clone())
            // TCP as the DSN says, not the server's socket even on localhost.
            .prefer_socket(false)
            .init(
                settings
                    .session_variables
                    .iter()
                    .map(|(k, v)| format!("SET {k}={v}"))
                    .collect::<Vec<_>>(),
            );
        match &settings.tls {
            MysqlTls::Off => {}
            MysqlTls::SkipVerify => {
                builder = builder.ssl_opts(Some(
                    mysql_async::SslOpts::default()
                        .with_danger_accept_invalid_certs(true)
                        .with_danger_skip_domain_validation(true),
                ))
            }
            MysqlTls::CustomRoot(pem) => {
                builder = builder.ssl_opts(Some(
                    mysql_async::SslOpts::default().with_root_certs(vec![pem.clone().into()]),
                ))
            }
        }
        let server = Opts::from(builder.clone());
        let pool = Pool::new(builder.db_name(Some(settings.schema.clone())));
        let store = Arc::new(MysqlStore {
            sql: Statements::new(settings),
            settings: settings.clone(),
            server,
            pool,
            ready: tokio::sync::OnceCell::new(),
            connected: AtomicBool::new(false),
        });
        sql::spawn_cleanup(
            &store,
            settings.cleanup_interval,
            |s: Arc<MysqlStore>, every| async move { s.cleanup(every).await },
        );
        Ok(store)
    }

    /// A pooled connection, the tables made first (callers bound it with `timed`).
    async fn conn(&self) -> Result<mysql_async::Conn, StoreError> {
        self.ready.get_or_try_init(|| self.create_tables()).await?;
        self.pool.get_conn().await.map_err(my_error)
    }

    /// Runs a call under the store's timeout, noting whether the database answered.
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        sql::timed(self.settings.timeout, &self.connected, f).await
    }

    /// As Dapr's `Init`: the database, the state table (then `expiredate` and `row_id` if a
    /// table from an older Dapr lacks them) and the metadata table.
    async fn create_tables(&self) -> Result<(), StoreError> {
        let (schema, t, m) = (
            &self.settings.schema,
            &self.settings.table,
            &self.settings.metadata_table,
        );
        let mut server = mysql_async::Conn::new(self.server.clone())
            .await
            .map_err(my_error)?;
        server
            .query_drop(format!("CREATE DATABASE IF NOT EXISTS {schema}"))
            .await
            .map_err(my_error)?;
        server.disconnect().await.map_err(my_error)?;
        let mut c = self.pool.get_conn().await.map_err(my_error)?;
        c.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {t} (id VARCHAR(255) NOT NULL PRIMARY KEY, value JSON NOT NULL, \
             isbinary BOOLEAN NOT NULL, insertDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
             updateDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
             eTag VARCHAR(36) NOT NULL, expiredate TIMESTAMP NULL, INDEX expiredate_idx(expiredate))"
        ))
        .await
        .map_err(my_error)?;
        for (column, ddl) in [
            ("expiredate", format!("ALTER TABLE {t} ADD COLUMN expiredate TIMESTAMP NULL, ADD INDEX expiredate_idx (expiredate)")),
            ("row_id", format!("ALTER TABLE {t} ADD COLUMN row_id BIGINT UNSIGNED AUTO_INCREMENT UNIQUE")),
        ] {
            let exists: Option<i64> = c
                .exec_first(
                    "SELECT count(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? AND column_name = ?",
                    (schema, t, column),
                )
                .await
                .map_err(my_error)?;
            if exists == Some(0) {
                match c.query_drop(&ddl).await {
                    // Another process added it first (ER_DUP_FIELDNAME).
                    Err(mysql_async::Error::Server(e)) if e.code == 1060 => {}
                    r => r.map_err(my_error)?,
                }
            }
        }
        c.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {m} (id VARCHAR(255) NOT NULL PRIMARY KEY, value TEXT NOT NULL)"
        ))
        .await
        .map_err(my_error)?;
        Ok(())
    }

    async fn cleanup(&self, interval: std::time::Duration) -> Result<u64, StoreError> {
        let since_ms = interval.as_millis() as i64 - 100;
        self.timed(async {
            let c = &mut self.conn().await?;
            if exec_count(
                c,
                &self.sql.last_cleanup,
                Params::Positional(vec![since_ms.into()]),
            )
            .await?
                == 0
            {
                return Ok(0);
            }
            exec_count(c, &self.sql.delete_expired, Params::Empty).await
        })
        .await
    }

    async fn set_on<Q: Queryable>(
        &self,
        c: &mut Q,
        request: &SetRequest,
    ) -> Result<(), StoreError> {
        let ttl = ttl_seconds(request)?;
        let (value, isbinary) = json_column(request)?;
        let etag = sql::uuid_v4();
        let key = request.key.as_str();
        let (statement, params): (&str, Params) = match (&request.etag, request.concurrency) {
            (Some(old), _) => (
                &self.sql.update_with_etag,
                Params::Positional(vec![
                    value.into(),
                    etag.into(),
                    isbinary.into(),
                    ttl.into(),
                    ttl.into(),
                    key.into(),
                    old.as_str().into(),
                ]),
            ),
            (None, Concurrency::FirstWrite) => (
                &self.sql.insert_first_write,
                Params::Positional(vec![
                    key.into(),
                    value.into(),
                    isbinary.into(),
                    etag.into(),
                    ttl.into(),
                    ttl.into(),
                    key.into(),
                ]),
            ),
            (None, _) => (
                &self.sql.replace,
                Params::Positional(vec![
                    key.into(),
                    value.into(),
                    etag.into(),
                    isbinary.into(),
                    ttl.into(),
                    ttl.into(),
                ]),
            ),
        };
        let rows = exec_count(c, statement, params).await?;
        if rows == 0 && (request.etag.is_some() || request.concurrency == Concurrency::FirstWrite) {
            // MySQL answers a lost first-write as a mismatch too (409), unlike Postgres.
            return Err(StoreError::EtagMismatch(
                "rows affected error: no rows match given key and eTag".into(),
            ));
        }
        Ok(())
    }

    async fn delete_on<Q: Queryable>(
        &self,
        c: &mut Q,
        request: &DeleteRequest,
    ) -> Result<(), StoreError> {
        let key = request.key.as_str();
        let rows = match &request.etag {
            None => exec_count(c, &self.sql.delete, Params::Positional(vec![key.into()])).await?,
            Some(e) => {
                let params = Params::Positional(vec![key.into(), e.as_str().into()]);
                exec_count(c, &self.sql.delete_with_etag, params).await?
            }
        };
        if rows != 1 && request.etag.is_some() {
            return Err(StoreError::EtagMismatch("possible etag mismatch".into()));
        }
        Ok(())
    }
}

/// Runs a statement (prepared once per connection) and counts the rows it changed.
async fn exec_count<Q: Queryable>(
    c: &mut Q,
    statement: &str,
    params: Params,
) -> Result<u64, StoreError> {
    let result = c.exec_iter(statement, params).await.map_err(my_error)?;
    let rows = result.affected_rows();
    result.drop_result().await.map_err(my_error)?;
    Ok(rows)
}

fn read_item(row: Row) -> Result<StoredItem, StoreError> {
    let (value, etag, isbinary, expires): (Vec<u8>, String, bool, Option<i64>) =
        mysql_async::from_row_opt(row).map_err(|e| StoreError::Failed(e.to_string()))?;
    Ok(sql::item(read_json_column(value, isbinary)?, etag, expires))
}

/// The server's own error (it answered) is `Failed`; anything on the way is `Unavailable`.
fn my_error(e: mysql_async::Error) -> StoreError {
    match e {
        mysql_async::Error::Server(e) => StoreError::Failed(e.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl StateStore for MysqlStore {
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError> {
        self.timed(async {
            let mut c = self.conn().await?;
            let row: Option<Row> = c
                .exec_first(&self.sql.get, (key,))
                .await
                .map_err(my_error)?;
            row.map(read_item).transpose()
        })
        .await
    }

    async fn set(&self, request: SetRequest) -> Result<(), StoreError> {
        self.timed(async { self.set_on(&mut self.conn().await?, &request).await })
            .await
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StoreError> {
        self.timed(async { self.delete_on(&mut self.conn().await?, &request).await })
            .await
    }

    /// One operation runs alone; several run in one transaction that rolls back on the
    /// first error.
    async fn transact(&self, ops: Vec<TransactionOp>) -> Result<(), StoreError> {
        self.timed(async {
            let c = &mut self.conn().await?;
            {
                if let [op] = &ops[..] {
                    return match op {
                        TransactionOp::Upsert(r) => self.set_on(c, r).await,
                        TransactionOp::Delete(r) => self.delete_on(c, r).await,
                    };
                }
                let mut tx = c
                    .start_transaction(mysql_async::TxOpts::default())
                    .await
                    .map_err(my_error)?;
                for op in &ops {
                    let r = match op {
                        TransactionOp::Upsert(r) => self.set_on(&mut tx, r).await,
                        TransactionOp::Delete(r) => self.delete_on(&mut tx, r).await,
                    };
                    if let Err(e) = r {
                        let _ = tx.rollback().await;
                        return Err(e);
                    }
                }
                tx.commit().await.map_err(my_error)
            }
        })
        .await
    }

    /// One `id IN (...)`: found rows in the database's order, then the missing keys.
    async fn bulk_get(
        &self,
        keys: &[String],
    ) -> Option<Result<Vec<(String, Option<StoredItem>)>, StoreError>> {
        if keys.is_empty() {
            return Some(Ok(Vec::new()));
        }
        let marks = vec!["?"; keys.len()].join(",");
        let statement = format!(
            "SELECT id, value, eTag, isbinary, UNIX_TIMESTAMP(expiredate) FROM {} WHERE id IN ({marks}) AND {LIVE}",
            self.settings.table
        );
        Some(
            self.timed(async {
                let mut c = self.conn().await?;
                {
                    let params: Vec<Value> = keys.iter().map(|k| k.as_str().into()).collect();
                    let rows: Vec<Row> = c.exec(&statement, params).await.map_err(my_error)?;
                    let mut out = Vec::with_capacity(keys.len());
                    for row in rows {
                        let (id, value, etag, isbinary, expires): (
                            String,
                            Vec<u8>,
                            String,
                            bool,
                            Option<i64>,
                        ) = mysql_async::from_row_opt(row)
                            .map_err(|e| StoreError::Failed(e.to_string()))?;
                        out.push((
                            id,
                            Some(sql::item(read_json_column(value, isbinary)?, etag, expires)),
                        ));
                    }
                    sql::append_missing(&mut out, keys);
                    Ok(out)
                }
            })
            .await,
        )
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
