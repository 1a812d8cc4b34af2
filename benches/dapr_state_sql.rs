//! The Dapr state API on SQL stores: save + get through fngate (gRPC and HTTP) against the
//! same statements issued directly with the same driver and pool (`PostgresStore`,
//! `MysqlStore`, in this process), same concurrency, same run; for PostgreSQL v1, v2 and
//! MariaDB (`state.mysql`).
//!
//! `cargo bench --bench dapr_state_sql [-- SECONDS]` (default 5 s per throughput phase).
//! The latency phase runs twice: with the servers' durable commits, then with commits that
//! do not wait for the disk (set for the phase and restored), which leaves in the tail
//! what fngate adds rather than the disk's fsync stalls.
//! `BENCH_ONLY=pg-v1|pg-v2|mysql` runs one store; `BENCH_RATE` sets the latency phase's
//! rate (500 ops/s). fngate runs alone on CPU 1 (`taskset`,
//! one worker thread); the database servers (the machine's PostgreSQL and MariaDB,
//! re-pinned for the run) and this process (the load generator) share CPU 0. fngate's CPU
//! per operation is read from `/proc/<pid>/stat`.

mod support;

use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use fngate::plan::{MysqlSettings, MysqlTls, PostgresLayout, PostgresSettings, PostgresTls};
use fngate::runtime::state::{MysqlStore, PostgresStore, SetRequest, StateStore};
use http_body_util::{BodyExt, Full};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{free_port, pct};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 16;
const POOL: usize = 16;
const TOKEN: &str = "bench-token";
const VALUE: &[u8] = &[b'v'; 256];
const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|v| v.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every process of the named programs onto `cpus` (new PostgreSQL backends inherit the
/// postmaster's).
fn pin(programs: &[&str], cpus: &str) {
    for p in programs {
        let out = Command::new("pgrep").args(["-x", p]).output().unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("taskset")
                .args(["-a", "-pc", cpus, pid])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// A store as the catalog names it and the same settings for the direct client.
struct Case {
    name: &'static str,
    kind: &'static str,
    version: &'static str,
    metadata: Vec<(String, String)>,
    direct: Arc<dyn StateStore>,
}

fn cases(tag: &str) -> Vec<Case> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let connection: Vec<(String, String)> = [
        ("host", "127.0.0.1"),
        ("port", "5432"),
        ("user", "postgres"),
        ("dbname", "postgres"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let pg = |layout, table: String, prefix: String| PostgresSettings {
        layout,
        // As fngate's own (libpq's default, prefer): TLS when the server offers it.
        tls: PostgresTls::Prefer,
        connection: connection.clone(),
        table,
        table_prefix: prefix,
        metadata_table: format!("{tag}.dapr_metadata"),
        timeout: Duration::from_secs(20),
        cleanup_interval: None,
        max_conns: POOL,
    };
    let mut out = Vec::new();
    if only.is_empty() || only == "pg-v1" {
        out.push(Case {
            name: "pg-v1",
            kind: "state.postgresql",
            version: "v1",
            metadata: vec![
                ("connectionString".into(), PG.into()),
                ("tableName".into(), format!("{tag}.v1state")),
                ("metadataTableName".into(), format!("{tag}.dapr_metadata")),
                ("maxConns".into(), POOL.to_string()),
            ],
            direct: PostgresStore::new(&pg(
                PostgresLayout::V1,
                format!("{tag}.v1state"),
                String::new(),
            ))
            .unwrap(),
        });
    }
    if only.is_empty() || only == "pg-v2" {
        out.push(Case {
            name: "pg-v2",
            kind: "state.postgresql",
            version: "v2",
            metadata: vec![
                ("connectionString".into(), PG.into()),
                ("tablePrefix".into(), format!("{tag}.v2")),
                ("metadataTableName".into(), format!("{tag}.dapr_metadata")),
                ("maxConns".into(), POOL.to_string()),
            ],
            direct: PostgresStore::new(&pg(
                PostgresLayout::V2,
                format!("{tag}.v2state"),
                format!("{tag}.v2"),
            ))
            .unwrap(),
        });
    }
    if only.is_empty() || only == "mysql" {
        out.push(Case {
            name: "mysql",
            kind: "state.mysql",
            version: "v1",
            metadata: vec![
                (
                    "connectionString".into(),
                    "root@tcp(127.0.0.1:3306)/".into(),
                ),
                ("schemaName".into(), tag.into()),
            ],
            direct: MysqlStore::new(&MysqlSettings {
                user: "root".into(),
                password: None,
                host: "127.0.0.1".into(),
                port: 3306,
                schema: tag.into(),
                table: "state".into(),
                metadata_table: "dapr_metadata".into(),
                timeout: Duration::from_secs(20),
                cleanup_interval: None,
                tls: MysqlTls::Off,
                session_variables: Vec::new(),
            })
            .unwrap(),
        });
    }
    out
}

struct Gate {
    proc: Proc,
    grpc: u16,
    http: u16,
    _dir: tempfile::TempDir,
}

fn start_fngate(cases: &[Case]) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let fns = dir.path().join("functions");
    std::fs::create_dir(&fns).unwrap();
    let mut states = String::new();
    for c in cases {
        states.push_str(&format!(
            "      {}:\n        spec:\n          type: {}\n          version: {}\n          metadata:\n",
            c.name, c.kind, c.version
        ));
        for (k, v) in &c.metadata {
            states.push_str(&format!(
                "            - {{name: {k}, value: {}}}\n",
                serde_json::to_string(v).unwrap()
            ));
        }
    }
    std::fs::write(
        fns.join("catalog.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-token, namespace: default}}\nstringData: {{token: {TOKEN}}}\n---\n\
             apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {{name: bench, namespace: default}}\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: bench-token\n    states:\n{states}"
        ),
    )
    .unwrap();
    let (grpc, http, admin, proxy) = (free_port(), free_port(), free_port(), free_port());
    let settings = dir.path().join("fngate.yaml");
    std::fs::write(
        &settings,
        format!(
            "listen:\n  http: 127.0.0.1:{proxy}\n  admin: 127.0.0.1:{admin}\n  dapr_grpc: 127.0.0.1:{grpc}\n  dapr_http: 127.0.0.1:{http}\ncatalog:\n  dir: functions\nthreads: 1\n"
        ),
    )
    .unwrap();
    let child = Command::new("taskset")
        .args(["-c", "1", env!("CARGO_BIN_EXE_fngate"), "run", "--config"])
        .arg(&settings)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("taskset and the fngate binary");
    let proc = Proc(child);
    wait_port(http);
    wait_port(grpc);
    Gate {
        proc,
        grpc,
        http,
        _dir: dir,
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

#[derive(Clone)]
enum Target {
    Direct(Arc<dyn StateStore>),
    Grpc(DaprClient<tonic::transport::Channel>, &'static str),
    Http(HttpClient, u16, &'static str),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Direct(_) => "direct",
            Target::Grpc(..) => "fngate gRPC",
            Target::Http(..) => "fngate HTTP",
        }
    }

    async fn save(&mut self, key: &str) {
        match self {
            Target::Direct(store) => store
                .set(SetRequest {
                    key: format!("bench-default||{key}"),
                    value: Bytes::from_static(VALUE),
                    json: false,
                    etag: None,
                    concurrency: Default::default(),
                    ttl: None,
                })
                .await
                .unwrap(),
            Target::Grpc(c, store) => {
                let mut r = tonic::Request::new(rt::SaveStateRequest {
                    store_name: store.to_string(),
                    states: vec![dapr::dapr::proto::common::v1::StateItem {
                        key: key.into(),
                        value: VALUE.to_vec(),
                        ..Default::default()
                    }],
                });
                r.metadata_mut()
                    .insert("dapr-api-token", TOKEN.parse().unwrap());
                c.save_state(r).await.unwrap();
            }
            Target::Http(c, port, store) => {
                let body = format!(
                    r#"[{{"key":"{key}","value":"{}"}}]"#,
                    std::str::from_utf8(VALUE).unwrap()
                );
                let req =
                    http::Request::post(format!("http://127.0.0.1:{port}/v1.0/state/{store}"))
                        .header("dapr-api-token", TOKEN)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                let resp = c.request(req).await.unwrap();
                assert_eq!(resp.status(), 204);
                resp.into_body().collect().await.unwrap();
            }
        }
    }

    async fn get(&mut self, key: &str) {
        match self {
            Target::Direct(store) => {
                store.get(&format!("bench-default||{key}")).await.unwrap();
            }
            Target::Grpc(c, store) => {
                let mut r = tonic::Request::new(rt::GetStateRequest {
                    store_name: store.to_string(),
                    key: key.into(),
                    ..Default::default()
                });
                r.metadata_mut()
                    .insert("dapr-api-token", TOKEN.parse().unwrap());
                c.get_state(r).await.unwrap();
            }
            Target::Http(c, port, store) => {
                let req =
                    http::Request::get(format!("http://127.0.0.1:{port}/v1.0/state/{store}/{key}"))
                        .header("dapr-api-token", TOKEN)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                let resp = c.request(req).await.unwrap();
                assert!(
                    resp.status() == 200 || resp.status() == 204,
                    "{}",
                    resp.status()
                );
                resp.into_body().collect().await.unwrap();
            }
        }
    }
}

/// `CONCURRENCY` workers alternating save and get for `secs`: operations per second.
async fn throughput(target: &Target, secs: f64) -> (f64, u64) {
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (mut t, ops) = (target.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop {
                let key = format!("w{w}-{}", i % 64);
                t.save(&key).await;
                t.get(&key).await;
                ops.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let n = ops.load(Ordering::Relaxed);
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

/// Latency at `rate` operations per second in all (open loop), the targets taking turns
/// request by request so each sees the same database (its fsync stalls included): p50 and
/// p99 in ms per target.
async fn latency_interleaved(targets: &[Target], rate: u64, count: u64) -> Vec<(f64, f64)> {
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count as usize);
    let turns = targets.len() as u64;
    for i in 0..count {
        interval.tick().await;
        let which = (i % turns) as usize;
        let mut t = targets[which].clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("lat-{}", i % 100);
            let start = Instant::now();
            // Each round of turns saves, the next gets: every target does both.
            if (i / turns) % 2 == 0 {
                t.save(&key).await;
            } else {
                t.get(&key).await;
            }
            (which, start.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lat = vec![Vec::new(); targets.len()];
    for t in tasks {
        let (which, ms) = t.await.unwrap();
        lat[which].push(ms);
    }
    lat.iter_mut()
        .map(|l| (pct(l, 0.5), pct(l, 0.99)))
        .collect()
}

/// Commits that return before the disk flush (PostgreSQL `synchronous_commit`, InnoDB
/// `innodb_flush_log_at_trx_commit`), for the second latency phase only.
async fn set_async_commit(pg: &tokio_postgres::Client, on: bool) {
    let pg_sql = if on {
        "ALTER SYSTEM SET synchronous_commit = off"
    } else {
        "ALTER SYSTEM RESET synchronous_commit"
    };
    pg.batch_execute(pg_sql).await.unwrap();
    pg.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let flush = if on { 2 } else { 1 };
    let _ = Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", "-e"])
        .arg(format!(
            "SET GLOBAL innodb_flush_log_at_trx_commit = {flush}"
        ))
        .status();
    // The reload reaches every backend at its next statement.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5.0);
    let rate_per_s: u64 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(500);
    let _ = Command::new("taskset")
        .args(["-a", "-pc", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    pin(&["postgres", "mariadbd"], "0");
    let tag = format!("bench_sql_{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (pg_client, _) = runtime.block_on(async {
        let (c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        let task = tokio::spawn(conn);
        c.batch_execute(&format!("CREATE SCHEMA {tag}"))
            .await
            .unwrap();
        (c, task)
    });
    let cases = runtime.block_on(async { cases(&tag) });
    let gate = start_fngate(&cases);
    let pid = gate.proc.0.id();
    runtime.block_on(async {
        let grpc = DaprClient::connect(format!("http://127.0.0.1:{}", gate.grpc)).await.unwrap();
        let http: HttpClient = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(CONCURRENCY)
            .build_http();
        println!("state save+get, {CONCURRENCY} concurrent, {secs} s each, 256-byte values, pools of {POOL}");
        println!(
            "{:<7} {:<12} {:>9} {:>7} {:>15} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10}",
            "store", "path", "ops/s", "ratio", "CPU/op", "p50 ms", "p99 ms", "p99 added",
            "async p50", "async p99", "p99 added"
        );
        println!("(CPU/op: fngate's for the fngate paths, this process's for direct; latency at {rate_per_s} ops/s in all, the three paths taking turns)");
        for case in &cases {
            let targets = [
                Target::Direct(case.direct.clone()),
                Target::Grpc(grpc.clone(), case.name),
                Target::Http(http.clone(), gate.http, case.name),
            ];
            let mut rows = Vec::new();
            for t in &targets {
                // Warm up: tables made, connections opened, statements prepared.
                throughput(t, 0.5).await;
                // The direct client runs in this process: its CPU per operation is what any
                // caller of the driver pays (the load generator's own share included).
                let server = match t {
                    Target::Direct(_) => std::process::id(),
                    _ => pid,
                };
                let before = cpu_seconds(server);
                let (rate, n) = throughput(t, secs).await;
                rows.push((rate, (cpu_seconds(server) - before) / n as f64 * 1e6));
            }
            let lat = latency_interleaved(&targets, rate_per_s, rate_per_s * 10).await;
            // Again with commits that do not wait for the disk (server settings, restored
            // below): what fngate adds, without the database's fsync stalls in the tail.
            set_async_commit(&pg_client, true).await;
            let fast = latency_interleaved(&targets, rate_per_s, rate_per_s * 10).await;
            set_async_commit(&pg_client, false).await;
            let (direct_rate, direct_p99, direct_fast_p99) = (rows[0].0, lat[0].1, fast[0].1);
            for (((t, (rate, cpu)), (p50, p99)), (fast_p50, fast_p99)) in
                targets.iter().zip(rows).zip(lat).zip(fast)
            {
                println!(
                    "{:<7} {:<12} {:>9.0} {:>7.2} {:>12.1} µs {:>9.3} {:>9.3} {:>10.3} {:>9.3} {:>9.3} {:>10.3}",
                    case.name,
                    t.name(),
                    rate,
                    rate / direct_rate,
                    cpu,
                    p50,
                    p99,
                    p99 - direct_p99,
                    fast_p50,
                    fast_p99,
                    fast_p99 - direct_fast_p99
                );
            }
        }
        let _ = pg_client.batch_execute(&format!("DROP SCHEMA {tag} CASCADE")).await;
    });
    drop(gate);
    let _ = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            "-uroot",
            "-e",
            &format!("DROP DATABASE IF EXISTS {tag}"),
        ])
        .status();
    pin(&["postgres", "mariadbd"], "0-1");
}
