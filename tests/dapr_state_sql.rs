//! fngate's Dapr state API on `state.postgresql` (v1 and v2) and `state.mysql`: the dapr
//! crate's gRPC client and plain HTTP against the real binary, with the machine's real
//! PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306), each test in its own schema or
//! database; the tests that stop a server or need TLS run private instances.

mod common;

use common::sql_servers::{PrivateMariadb, PrivatePostgres, SHARED_MARIADB, SHARED_POSTGRES};
use common::*;
use dapr::dapr::proto::common::v1 as common_v1;
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use mysql_async::prelude::Queryable;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "tok-orders";

/// One Function `orders` in `shop` (app-id `orders-shop`) with the state store `cart`.
fn catalog(kind: &str, version: &str, metadata: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = String::new();
    for (k, v) in metadata {
        meta.push_str(&format!(
            "            - name: {k}\n              value: {}\n",
            serde_json::to_string(v).unwrap()
        ));
    }
    let yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: orders-token
  namespace: shop
stringData:
  token: {TOKEN}
---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata:
  name: orders
  namespace: shop
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: orders-token
    states:
      cart:
        spec:
          type: {kind}
          version: {version}
          metadata:
{meta}"#
    );
    std::fs::write(dir.path().join("catalog.yaml"), yaml).unwrap();
    dir
}

/// The catalog folder (declared first, so it outlives fngate), fngate serving
/// `catalog(kind, version, metadata)`, and a gRPC client to it.
fn serve(
    kind: &str,
    version: &str,
    metadata: &[(&str, &str)],
) -> (tempfile::TempDir, DaprGate, DaprClient<Channel>) {
    let dir = catalog(kind, version, metadata);
    let gate = DaprGate::start(dir.path());
    let c = gate.client();
    (dir, gate, c)
}

/// The orders app's HTTP call.
fn http(gate: &DaprGate, method: &str, path: &str, body: &[u8]) -> Response {
    gate.http(method, path, Some(TOKEN), body)
}

fn save(key: &str, value: &[u8]) -> rt::SaveStateRequest {
    rt::SaveStateRequest {
        store_name: "cart".into(),
        states: vec![common_v1::StateItem {
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        }],
    }
}

fn with_etag(mut r: rt::SaveStateRequest, etag: &str) -> rt::SaveStateRequest {
    r.states[0].etag = Some(common_v1::Etag { value: etag.into() });
    r
}

fn first_write(mut r: rt::SaveStateRequest) -> rt::SaveStateRequest {
    r.states[0].options = Some(common_v1::StateOptions {
        concurrency: 1,
        consistency: 0,
    });
    r
}

fn with_ttl(mut r: rt::SaveStateRequest, seconds: &str) -> rt::SaveStateRequest {
    r.states[0]
        .metadata
        .insert("ttlInSeconds".into(), seconds.into());
    r
}

async fn read(c: &mut DaprClient<Channel>, key: &str) -> rt::GetStateResponse {
    c.get_state(with_token(
        rt::GetStateRequest {
            store_name: "cart".into(),
            key: key.into(),
            ..Default::default()
        },
        TOKEN,
    ))
    .await
    .unwrap()
    .into_inner()
}

async fn write(c: &mut DaprClient<Channel>, r: rt::SaveStateRequest) -> Result<(), tonic::Status> {
    c.save_state(with_token(r, TOKEN)).await.map(|_| ())
}

async fn delete(c: &mut DaprClient<Channel>, key: &str, etag: &str) -> Result<(), tonic::Status> {
    c.delete_state(with_token(
        rt::DeleteStateRequest {
            store_name: "cart".into(),
            key: key.into(),
            etag: Some(common_v1::Etag { value: etag.into() }),
            ..Default::default()
        },
        TOKEN,
    ))
    .await
    .map(|_| ())
}

fn upsert(key: &str, value: &[u8], etag: Option<&str>) -> rt::TransactionalStateOperation {
    rt::TransactionalStateOperation {
        operation_type: "upsert".into(),
        request: Some(common_v1::StateItem {
            key: key.into(),
            value: value.to_vec(),
            etag: etag.map(|e| common_v1::Etag { value: e.into() }),
            ..Default::default()
        }),
    }
}

async fn transact(
    c: &mut DaprClient<Channel>,
    operations: Vec<rt::TransactionalStateOperation>,
) -> Result<(), tonic::Status> {
    c.execute_state_transaction(with_token(
        rt::ExecuteStateTransactionRequest {
            store_name: "cart".into(),
            operations,
            metadata: Default::default(),
        },
        TOKEN,
    ))
    .await
    .map(|_| ())
}

async fn bulk_keys(c: &mut DaprClient<Channel>, keys: &[&str]) -> Vec<(String, Vec<u8>, String)> {
    c.get_bulk_state(with_token(
        rt::GetBulkStateRequest {
            store_name: "cart".into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            parallelism: 0,
            metadata: Default::default(),
        },
        TOKEN,
    ))
    .await
    .unwrap()
    .into_inner()
    .items
    .into_iter()
    .map(|i| (i.key, i.data, i.etag))
    .collect()
}

/// With the database stopped a call fails promptly (Internal); once it is started again
/// the store reconnects by itself and serves.
fn down_then_back(
    gate: &DaprGate,
    c: &mut DaprClient<Channel>,
    stop: impl FnOnce(),
    start: impl FnOnce(),
) {
    stop();
    gate.rt.block_on(async {
        let e = write(c, save("k", b"down")).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e:?}");
    });
    start();
    gate.rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = write(c, save("k", b"after")).await {
            assert!(Instant::now() < deadline, "never served again: {e:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(read(c, "k").await.data, b"after");
    });
}

/// A PostgreSQL connection of the test's own (on the gate's runtime).
async fn pg(connection: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(connection, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1");
    tokio::spawn(conn);
    client
}

/// A schema of the test's own, dropped at the end.
struct PgSchema {
    name: String,
    connection: String,
}

impl PgSchema {
    fn new(connection: &str) -> PgSchema {
        let name = unique("fngate_t");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            pg(connection)
                .await
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .await
                .unwrap()
        });
        PgSchema {
            name,
            connection: connection.to_owned(),
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (name, connection) = (&self.name, &self.connection);
        rt.block_on(async {
            if let Ok((c, conn)) = tokio_postgres::connect(connection, tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                let _ = c
                    .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                    .await;
            }
        });
    }
}

#[test]
fn postgres_v1_serves_every_state_call_in_daprs_layout() {
    let schema = PgSchema::new(SHARED_POSTGRES);
    let s = &schema.name;
    let table = format!("{s}.state");
    let (_dir, gate, mut c) = serve(
        "state.postgresql",
        "v1",
        &[
            ("connectionString", SHARED_POSTGRES),
            ("tableName", &table),
            ("metadataTableName", &format!("{s}.dapr_metadata")),
            ("cleanupInterval", "1s"),
        ],
    );
    gate.rt.block_on(async {
        let db = pg(SHARED_POSTGRES).await;
        write(&mut c, save("k", b"hello")).await.unwrap();
        // Dapr's v1 row: raw bytes as a base64 JSON string, isbinary, the app-id prefix.
        let row = db
            .query_one(&format!("SELECT value::text, isbinary, xmin::text FROM {table} WHERE key = 'orders-shop||k'"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), r#""aGVsbG8=""#);
        assert!(row.get::<_, bool>(1));
        let xmin: String = row.get(2);
        let got = read(&mut c, "k").await;
        assert_eq!((got.data.as_slice(), got.etag.as_str()), (&b"hello"[..], xmin.as_str()));

        // The ETag guards writes under any concurrency; a non-number is invalid (400).
        let e = write(&mut c, with_etag(save("k", b"lost"), "1")).await.unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        let e = write(&mut c, with_etag(save("k", b"x"), "abc")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        write(&mut c, with_etag(save("k", b"v2"), &xmin)).await.unwrap();
        assert_eq!(read(&mut c, "k").await.data, b"v2");
        // First-write against a live row: Postgres's plain failure (Internal / 500).
        let e = write(&mut c, first_write(save("k", b"again"))).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e:?}");
        assert!(e.message().contains("no item was updated"), "{}", e.message());
        write(&mut c, first_write(save("fresh", b"1"))).await.unwrap();

        // HTTP: the JSON value goes to jsonb and comes back as Postgres renders it.
        let r = http(&gate, "POST", "/v1.0/state/cart", br#"[{"key":"j","value":{"b":1,"a":"<x>"}}]"#);
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        let row = db
            .query_one(&format!("SELECT value::text, isbinary, xmin::text FROM {table} WHERE key = 'orders-shop||j'"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), r#"{"a": "<x>", "b": 1}"#);
        assert!(!row.get::<_, bool>(1));
        let r = http(&gate, "GET", "/v1.0/state/cart/j", b"");
        assert_eq!(r.body, br#"{"a": "<x>", "b": 1}"#);
        assert_eq!(r.header("etag"), Some(row.get::<_, String>(2).as_str()));

        // Bulk get: found rows in the database's order, the missing key appended.
        let bulk = bulk_keys(&mut c, &["missing", "j", "k"]).await;
        assert_eq!(bulk.len(), 3);
        assert_eq!(bulk[2].0, "missing");
        assert!(bulk[2].1.is_empty() && bulk[2].2.is_empty());
        let mut found: Vec<_> = bulk[..2].iter().map(|(k, d, _)| (k.as_str(), d.clone())).collect();
        found.sort();
        assert_eq!(found, [("j", br#"{"a": "<x>", "b": 1}"#.to_vec()), ("k", b"v2".to_vec())]);

        // A transaction failing half way (a stale ETag) leaves nothing behind.
        let e = transact(&mut c, vec![upsert("t1", b"a", None), upsert("k", b"b", Some("7"))])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(read(&mut c, "t1").await.data.is_empty());
        assert_eq!(read(&mut c, "k").await.data, b"v2");
        transact(&mut c, vec![upsert("t1", b"a", None), upsert("t2", b"b", None)]).await.unwrap();
        assert_eq!(read(&mut c, "t2").await.data, b"b");

        // Delete: a wrong xmin is a mismatch, the right one deletes.
        let etag = read(&mut c, "t1").await.etag;
        assert_eq!(delete(&mut c, "t1", "12345").await.unwrap_err().code(), Code::Aborted);
        delete(&mut c, "t1", &etag).await.unwrap();
        assert!(read(&mut c, "t1").await.data.is_empty());

        // TTL: the expiry is reported, the row is gone for readers once due, and the
        // background cleanup deletes it and records itself in the metadata table.
        write(&mut c, with_ttl(save("short", b"x"), "1")).await.unwrap();
        let got = read(&mut c, "short").await;
        assert!(
            got.metadata.get("ttlExpireTime").is_some_and(|t| t.ends_with('Z')),
            "{:?}",
            got.metadata
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: i64 = db
                .query_one(&format!("SELECT count(*) FROM {table} WHERE key = 'orders-shop||short'"), &[])
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the expired row was never cleaned up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(read(&mut c, "short").await.data.is_empty());
        let md: Vec<(String, String)> = db
            .query(&format!("SELECT key, value FROM {s}.dapr_metadata ORDER BY key"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let keys: Vec<&str> = md.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["last-cleanup", "lock", "migrations"]);
        assert_eq!(md[2].1, "3", "Dapr's three v1 migrations recorded");
    });
}

#[test]
fn postgres_v2_keeps_bytes_and_uuid_etags() {
    let schema = PgSchema::new(SHARED_POSTGRES);
    let s = &schema.name;
    let (_dir, gate, mut c) = serve(
        "state.postgresql",
        "v2",
        &[
            (
                "connectionString",
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
            ),
            ("tablePrefix", &format!("{s}.")),
            ("metadataTableName", &format!("{s}.dapr_metadata")),
            ("timeout", "5"),
        ],
    );
    gate.rt.block_on(async {
        let db = pg(SHARED_POSTGRES).await;
        write(&mut c, save("raw", &[0, 159, 146, 150]))
            .await
            .unwrap();
        let r = http(
            &gate,
            "POST",
            "/v1.0/state/cart",
            br#"[{"key":"j","value":{"z":"<&>","a":1.50}}]"#,
        );
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        let rows: Vec<(String, Vec<u8>, String)> = db
            .query(
                &format!("SELECT key, value, etag::text FROM {s}.state ORDER BY key"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        // v2: bytes as they are; a JSON value as Go's json.Marshal writes it.
        assert_eq!(rows[0].0, "orders-shop||j");
        assert_eq!(rows[0].1, br#"{"a":1.5,"z":"\u003c\u0026\u003e"}"#);
        assert_eq!(rows[1].1, [0, 159, 146, 150]);
        let got = read(&mut c, "raw").await;
        assert_eq!(
            (got.data, got.etag.clone()),
            (vec![0, 159, 146, 150], rows[1].2.clone())
        );

        // A malformed uuid is a mismatch on v2 (409), not invalid as on v1.
        let e = write(&mut c, with_etag(save("raw", b"x"), "abc"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        let e = write(
            &mut c,
            with_etag(save("raw", b"x"), "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        write(
            &mut c,
            with_etag(save("raw", b"new"), &got.etag.to_uppercase()),
        )
        .await
        .unwrap();
        let now = read(&mut c, "raw").await;
        assert_eq!(now.data, b"new");
        assert_ne!(now.etag, got.etag, "every write makes a new uuid");
        let e = write(&mut c, first_write(save("raw", b"again")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e:?}");
        let version: String = db
            .query_one(
                &format!("SELECT value FROM {s}.dapr_metadata WHERE key = $1"),
                &[&format!("migrations-state-v2-{s}.")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, "2");
    });
}

#[test]
fn postgres_rows_written_by_daprs_sql_and_by_fngate_are_read_by_the_other() {
    let schema = PgSchema::new(SHARED_POSTGRES);
    let s = &schema.name;
    let table = format!("{s}.state");
    let gate_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The tables as daprd 1.16 leaves them (two migrations), with a row it wrote over gRPC
    // (bytes) and one over HTTP (JSON).
    gate_rt.block_on(async {
        let db = pg(SHARED_POSTGRES).await;
        db.batch_execute(&format!(
            "CREATE TABLE {s}.dapr_metadata (key text NOT NULL PRIMARY KEY, value text NOT NULL);
             INSERT INTO {s}.dapr_metadata (key, value) VALUES ('lock', 'lock'), ('migrations', '2');
             CREATE TABLE {table} (key text NOT NULL PRIMARY KEY, value jsonb NOT NULL, isbinary boolean NOT NULL,
               insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(), updatedate TIMESTAMP WITH TIME ZONE NULL);
             ALTER TABLE {table} ADD expiredate TIMESTAMP WITH TIME ZONE;
             INSERT INTO {table} (key, value, isbinary, expiredate) VALUES ('orders-shop||bytes', '\"ZGFwcg==\"', true, NULL);
             INSERT INTO {table} (key, value, isbinary, expiredate) VALUES ('orders-shop||json', '{{\"n\":1}}', false, NULL);"
        ))
        .await
        .unwrap();
    });
    drop(gate_rt);
    let (_dir, gate, mut c) = serve(
        "state.postgresql",
        "v1",
        &[
            ("connectionString", SHARED_POSTGRES),
            ("tableName", &table),
            ("metadataTableName", &format!("{s}.dapr_metadata")),
        ],
    );
    gate.rt.block_on(async {
        let db = pg(SHARED_POSTGRES).await;
        // The first call migrates (adding row_id rewrites the rows, so their xmin changes,
        // as under daprd's own migration); the row then reads with its current xmin.
        let got = read(&mut c, "bytes").await;
        let xmin: String = db
            .query_one(&format!("SELECT xmin::text FROM {table} WHERE key = 'orders-shop||bytes'"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!((got.data.as_slice(), got.etag.as_str()), (&b"dapr"[..], xmin.as_str()));
        assert_eq!(http(&gate, "GET", "/v1.0/state/cart/json", b"").body, br#"{"n": 1}"#);
        // fngate's write continues with daprd's ETag, and daprd's own read query sees it.
        write(&mut c, with_etag(save("bytes", b"fngate"), &xmin)).await.unwrap();
        let row = db
            .query_one(
                &format!("SELECT key, value, isbinary, xmin AS etag, expiredate FROM {table} WHERE key = $1 AND (expiredate IS NULL OR expiredate >= CURRENT_TIMESTAMP)"),
                &[&"orders-shop||bytes"],
            )
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&db.query_one(&format!("SELECT value::text FROM {table} WHERE key = 'orders-shop||bytes'"), &[]).await.unwrap().get::<_, String>(0)).unwrap();
        assert_eq!(value, "Zm5nYXRl", "base64 of the bytes, as daprd decodes them");
        assert!(row.get::<_, bool>(2));
        // The migration daprd 1.16 had not run was run, the rows kept.
        let version: String = db
            .query_one(&format!("SELECT value FROM {s}.dapr_metadata WHERE key = 'migrations'"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, "3");
        let count: i64 = db
            .query_one(&format!("SELECT count(row_id) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 2);
    });
}

#[test]
fn two_fngates_creating_the_postgres_tables_at_once_both_serve() {
    let schema = PgSchema::new(SHARED_POSTGRES);
    let s = &schema.name;
    let meta = [
        ("connectionString", SHARED_POSTGRES),
        ("tableName", &*format!("{s}.state")),
        ("metadataTableName", &*format!("{s}.dapr_metadata")),
    ];
    let dir = catalog("state.postgresql", "v1", &meta);
    let (a, b) = (DaprGate::start(dir.path()), DaprGate::start(dir.path()));
    let (mut ca, mut cb) = (a.client(), b.client());
    // Both first calls at once: both migrate under the lock row, neither fails.
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| a.rt.block_on(write(&mut ca, save("from-a", b"a"))));
        let tb = scope.spawn(|| b.rt.block_on(write(&mut cb, save("from-b", b"b"))));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    ra.unwrap();
    rb.unwrap();
    a.rt.block_on(async {
        assert_eq!(read(&mut ca, "from-b").await.data, b"b");
        let db = pg(SHARED_POSTGRES).await;
        let version: String = db
            .query_one(
                &format!("SELECT value FROM {s}.dapr_metadata WHERE key = 'migrations'"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, "3");
    });
}

#[test]
fn a_postgres_restarted_mid_run_gives_prompt_errors_then_serves_again() {
    let server = PrivatePostgres::start();
    let (_dir, gate, mut c) = serve(
        "state.postgresql",
        "v1",
        &[
            ("connectionString", &server.connection()),
            ("timeout", "3s"),
        ],
    );
    gate.rt.block_on(async {
        write(&mut c, save("k", b"before")).await.unwrap();
    });
    down_then_back(&gate, &mut c, || server.stop(), || server.spawn());
}

#[test]
fn postgres_over_tls_checks_the_server_as_sslmode_says() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(certs.path());
    // The server takes TLS connections only: serving at all proves the connection is TLS.
    let server = PrivatePostgres::start_with(Some((&cert, &key)));
    let base = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        server.port
    );
    let verified = format!("{base} sslmode=verify-full sslrootcert={}", ca.display());
    let (_dir, gate, mut c) = serve("state.postgresql", "v1", &[("connectionString", &verified)]);
    gate.rt.block_on(async {
        write(&mut c, save("k", b"over tls")).await.unwrap();
        assert_eq!(read(&mut c, "k").await.data, b"over tls");
    });
    // libpq's default (prefer) also encrypts; disable is refused by this server; a CA that
    // did not sign the server's certificate is refused by fngate.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = ca_and_server_cert(other.path());
    for (connection, works) in [
        (base.clone(), true),
        (format!("{base} sslmode=disable"), false),
        (
            format!(
                "{base} sslmode=verify-ca sslrootcert={}",
                wrong_ca.display()
            ),
            false,
        ),
    ] {
        let dir = catalog(
            "state.postgresql",
            "v1",
            &[("connectionString", &connection), ("timeout", "3s")],
        );
        let gate = DaprGate::start(dir.path());
        let mut c = gate.client();
        let r = gate.rt.block_on(write(&mut c, save("k", b"again")));
        assert_eq!(r.is_ok(), works, "{connection}: {r:?}");
    }
}

/// A database of the test's own on the shared MariaDB, dropped at the end.
struct MyDatabase {
    name: String,
}

impl MyDatabase {
    fn new() -> MyDatabase {
        MyDatabase {
            name: unique("fngate_t"),
        }
    }
}

impl Drop for MyDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("mariadb")
            .args([
                "-h127.0.0.1",
                "-uroot",
                "-e",
                &format!("DROP DATABASE IF EXISTS {}", self.name),
            ])
            .status();
    }
}

async fn mysql(port: u16, db: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
        .db_name(Some(db));
    mysql_async::Conn::new(opts)
        .await
        .expect("MariaDB on 127.0.0.1")
}

#[test]
fn mysql_serves_every_state_call_in_daprs_layout() {
    let db = MyDatabase::new();
    let (_dir, gate, mut c) = serve(
        "state.mysql",
        "v1",
        &[
            (
                "connectionString",
                &format!("{SHARED_MARIADB}?allowNativePasswords=true&parseTime=true"),
            ),
            ("schemaName", &db.name),
            ("cleanupInterval", "1s"),
        ],
    );
    gate.rt.block_on(async {
        write(&mut c, save("k", b"hello")).await.unwrap();
        let mut my = mysql(3306, &db.name).await;
        let (value, isbinary, etag): (String, bool, String) = my
            .query_first("SELECT value, isbinary, eTag FROM state WHERE id = 'orders-shop||k'")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((value.as_str(), isbinary), (r#""aGVsbG8=""#, true));
        assert_eq!(etag.len(), 36);
        let got = read(&mut c, "k").await;
        assert_eq!((got.data.as_slice(), got.etag.as_str()), (&b"hello"[..], etag.as_str()));

        // HTTP JSON: stored as Go's json.Marshal wrote it, returned as stored.
        let r = http(&gate, "POST", "/v1.0/state/cart", br#"[{"key":"j","value":{"b":[1,2],"a":"<x>"}}]"#);
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        let (value,): (String,) = my.query_first("SELECT value FROM state WHERE id = 'orders-shop||j'").await.unwrap().unwrap();
        assert_eq!(value, r#"{"a":"\u003cx\u003e","b":[1,2]}"#);
        assert_eq!(http(&gate, "GET", "/v1.0/state/cart/j", b"").body, value.as_bytes());

        // ETags: stale → 409; first-write on a live row → 409 too on MySQL.
        let e = write(&mut c, with_etag(save("k", b"lost"), "not-the-etag")).await.unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        let e = write(&mut c, first_write(save("k", b"again"))).await.unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        write(&mut c, with_etag(save("k", b"v2"), &etag)).await.unwrap();
        let now = read(&mut c, "k").await;
        assert_eq!(now.data, b"v2");
        assert_ne!(now.etag, etag);
        write(&mut c, first_write(save("fresh", b"1"))).await.unwrap();

        // Transactions roll back on the first error.
        let e = transact(&mut c, vec![upsert("t1", b"a", None), upsert("k", b"b", Some("stale"))])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(read(&mut c, "t1").await.data.is_empty());
        transact(&mut c, vec![upsert("t1", b"a", None), upsert("t2", b"b", None)]).await.unwrap();

        let bulk = bulk_keys(&mut c, &["missing", "t2", "t1"]).await;
        assert_eq!(bulk.len(), 3);
        assert_eq!(bulk[2].0, "missing");

        assert_eq!(delete(&mut c, "t1", "wrong").await.unwrap_err().code(), Code::Aborted);
        let etag = read(&mut c, "t1").await.etag;
        delete(&mut c, "t1", &etag).await.unwrap();

        // TTL and the background cleanup.
        write(&mut c, with_ttl(save("short", b"x"), "1")).await.unwrap();
        assert!(read(&mut c, "short").await.metadata.contains_key("ttlExpireTime"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: Option<i64> = my.query_first("SELECT count(*) FROM state WHERE id = 'orders-shop||short'").await.unwrap();
            if left == Some(0) {
                break;
            }
            assert!(Instant::now() < deadline, "the expired row was never cleaned up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let cleaned: Option<String> = my.query_first("SELECT id FROM dapr_metadata WHERE id = 'last-cleanup'").await.unwrap();
        assert!(cleaned.is_some());
        let row_id: Option<i64> = my
            .query_first(format!("SELECT count(*) FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'state' AND column_name = 'row_id'", db.name))
            .await
            .unwrap();
        assert_eq!(row_id, Some(1));
    });
}

#[test]
fn mysql_rows_written_by_daprs_sql_are_read_and_two_fngates_create_tables_at_once() {
    let db = MyDatabase::new();
    let name = &db.name;
    // The table as an older daprd created it (no row_id), with a row it wrote.
    let out = std::process::Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", "-e"])
        .arg(format!(
            "CREATE DATABASE {name}; USE {name};
             CREATE TABLE state (id VARCHAR(255) NOT NULL PRIMARY KEY, value JSON NOT NULL, isbinary BOOLEAN NOT NULL,
               insertDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
               updateDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
               eTag VARCHAR(36) NOT NULL, expiredate TIMESTAMP NULL, INDEX expiredate_idx(expiredate));
             REPLACE INTO state (id, value, eTag, isbinary, expiredate)
               VALUES ('orders-shop||old', '\"ZGFwcg==\"', '0b0e4e4a-1b8c-4c3e-9d5e-2f4f6a7b8c9d', 1, NULL);"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = catalog(
        "state.mysql",
        "v1",
        &[("connectionString", SHARED_MARIADB), ("schemaName", name)],
    );
    let (a, b) = (DaprGate::start(dir.path()), DaprGate::start(dir.path()));
    let (mut ca, mut cb) = (a.client(), b.client());
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| a.rt.block_on(read(&mut ca, "old")));
        let tb = scope.spawn(|| b.rt.block_on(write(&mut cb, save("from-b", b"b"))));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(
        (ra.data.as_slice(), ra.etag.as_str()),
        (&b"dapr"[..], "0b0e4e4a-1b8c-4c3e-9d5e-2f4f6a7b8c9d")
    );
    rb.unwrap();
    a.rt.block_on(async {
        write(&mut ca, with_etag(save("old", b"fngate"), "0b0e4e4a-1b8c-4c3e-9d5e-2f4f6a7b8c9d")).await.unwrap();
        // daprd's read query sees fngate's row.
        let mut my = mysql(3306, name).await;
        let (value, isbinary): (String, bool) = my
            .query_first(r#"SELECT value, isbinary FROM state WHERE id = 'orders-shop||old' AND (expiredate IS NULL OR expiredate > CURRENT_TIMESTAMP)"#)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((value.as_str(), isbinary), (r#""Zm5nYXRl""#, true));
        let row_ids: Option<i64> = my.query_first("SELECT count(row_id) FROM state").await.unwrap();
        assert_eq!(row_ids, Some(2));
    });
}

#[test]
fn mysql_over_tls_with_a_pem_and_restarted_mid_run() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(certs.path());
    let server = PrivateMariadb::start(Some((cert, key)));
    // A user that may only connect over TLS: serving at all proves the connection is TLS.
    server.sql("CREATE USER 'dapr'@'127.0.0.1' IDENTIFIED BY 'pw' REQUIRE SSL; GRANT ALL ON *.* TO 'dapr'@'127.0.0.1'");
    let pem = std::fs::read_to_string(&ca).unwrap();
    let dsn = format!("dapr:pw@tcp(127.0.0.1:{})/?tls=custom", server.port);
    let (_dir, gate, mut c) = serve(
        "state.mysql",
        "v1",
        &[
            ("connectionString", &dsn),
            ("pemContents", &pem),
            ("timeoutInSeconds", "3"),
        ],
    );
    gate.rt.block_on(async {
        write(&mut c, save("k", b"over tls")).await.unwrap();
        assert_eq!(read(&mut c, "k").await.data, b"over tls");
    });
    down_then_back(&gate, &mut c, || server.stop(), || server.spawn());

    // Without the server's CA in pemContents the connection is refused, not made in the clear.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = ca_and_server_cert(other.path());
    let wrong = std::fs::read_to_string(wrong_ca).unwrap();
    let (_dir, gate, mut c) = serve(
        "state.mysql",
        "v1",
        &[
            ("connectionString", &dsn),
            ("pemContents", &wrong),
            ("timeoutInSeconds", "3"),
        ],
    );
    gate.rt.block_on(async {
        let e = write(&mut c, save("k", b"x")).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e:?}");
    });
}

#[test]
fn bad_sql_store_metadata_is_reported_at_its_field() {
    let dir = catalog(
        "state.mysql",
        "v1",
        &[
            ("connectionString", "root@tcp(127.0.0.1:3306)/mydb"),
            ("schemaName", "x"),
        ],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fngate"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("connectionString") && text.contains("schemaName"),
        "{text}"
    );
}

/// daprd's outbox on the SQL stores: the state value stored, the projection published to
/// JetStream, the marker row gone after.
#[test]
fn the_outbox_runs_on_postgres_and_mysql() {
    use futures::StreamExt as _;
    let schema = PgSchema::new(SHARED_POSTGRES);
    let pg_table = format!("{}.state", schema.name);
    let pg_meta = format!("{}.dapr_metadata", schema.name);
    let my = MyDatabase::new();
    let my_connection = format!("{SHARED_MARIADB}?allowNativePasswords=true&parseTime=true");
    let stores: [(&str, Vec<(&str, &str)>); 2] = [
        (
            "state.postgresql",
            vec![
                ("connectionString", SHARED_POSTGRES),
                ("tableName", &pg_table),
                ("metadataTableName", &pg_meta),
            ],
        ),
        (
            "state.mysql",
            vec![
                ("connectionString", &my_connection),
                ("schemaName", &my.name),
            ],
        ),
    ];
    let nats = tokio::runtime::Runtime::new().unwrap();
    for (kind, mut metadata) in stores {
        let topic = unique("fngate-sql-outbox.");
        let stream_name = unique("FNGATE_SQL_OUTBOX_").replace('.', "_");
        let internal = format!("shoporders-shop{topic}outbox");
        let js = nats.block_on(async {
            async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap())
        });
        let stream = nats
            .block_on(js.create_stream(async_nats::jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![topic.clone(), internal],
                ..Default::default()
            }))
            .unwrap();
        let reader = nats
            .block_on(
                stream.create_consumer(async_nats::jetstream::consumer::pull::Config {
                    filter_subject: topic.clone(),
                    ..Default::default()
                }),
            )
            .unwrap();
        metadata.push(("outboxPublishPubsub", "bus"));
        metadata.push(("outboxPublishTopic", &topic));
        let dir = catalog(kind, "v1", &metadata);
        let path = dir.path().join("catalog.yaml");
        let mut yaml = std::fs::read_to_string(&path).unwrap();
        yaml.push_str("    pubsub:\n      bus:\n        type: pubsub.jetstream\n        metadata:\n          - {name: natsURL, value: \"nats://127.0.0.1:4222\"}\n");
        std::fs::write(&path, yaml).unwrap();
        let gate = DaprGate::start(dir.path());
        let r = http(
            &gate,
            "POST",
            "/v1.0/state/cart/transaction",
            br#"{"operations":[
                {"operation":"upsert","request":{"key":"o1","value":"stored"}},
                {"operation":"upsert","request":{"key":"o1","value":"published","metadata":{"outbox.projection":"true"}}}
            ]}"#,
        );
        assert_eq!(
            r.status,
            204,
            "{kind}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let r = http(&gate, "GET", "/v1.0/state/cart/o1", b"");
        assert_eq!(r.body, b"\"stored\"", "{kind}");
        let mut messages = nats.block_on(reader.messages()).unwrap();
        let message = nats
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), messages.next()).await
            })
            .unwrap_or_else(|_| panic!("{kind}: no event on the outbox topic within 60 s"))
            .unwrap()
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(event["data"], "published", "{kind}: {event}");
        // The marker row goes once the event is out.
        let id = event["id"].as_str().unwrap().to_owned();
        let marker_rows = || -> i64 {
            nats.block_on(async {
                if kind == "state.postgresql" {
                    pg(SHARED_POSTGRES)
                        .await
                        .query_one(
                            &format!("SELECT count(*) FROM {pg_table} WHERE key = $1"),
                            &[&id],
                        )
                        .await
                        .unwrap()
                        .get(0)
                } else {
                    mysql(3306, &my.name)
                        .await
                        .exec_first::<i64, _, _>(
                            "SELECT count(*) FROM state WHERE id = ?",
                            (id.as_str(),),
                        )
                        .await
                        .unwrap()
                        .unwrap()
                }
            })
        };
        gate.fngate
            .wait_until(|| marker_rows() == 0, "the outbox marker row deleted");
        let _ = nats.block_on(js.delete_stream(&stream_name));
    }
}
