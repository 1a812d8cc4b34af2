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

use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use fngate::plan::{MysqlSettings, MysqlTls, PostgresLayout, PostgresSettings, PostgresTls};
use fngate::runtime::state::{MysqlStore, PostgresStore, StateStore};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pct;
use support::state::{
    cpu_seconds, direct_get, direct_save, grpc_get, grpc_save, http_client, http_get, http_save,
    start_fngate, throughput, HttpClient, StateTarget, CONCURRENCY, TOKEN,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POOL: usize = 16;
const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

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

/// One Function `bench` whose state stores are the cases, by their names.
fn catalog(cases: &[Case]) -> String {
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
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-token, namespace: default}}\nstringData: {{token: {TOKEN}}}\n---\n\
         apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {{name: bench, namespace: default}}\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: bench-token\n    states:\n{states}"
    )
}

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
}

impl StateTarget for Target {
    async fn save(&mut self, key: &str) {
        match self {
            Target::Direct(store) => direct_save(&**store, key).await,
            Target::Grpc(c, store) => grpc_save(c, store, key).await,
            Target::Http(c, port, store) => http_save(c, *port, store, key).await,
        }
    }

    async fn get(&mut self, key: &str) {
        match self {
            Target::Direct(store) => direct_get(&**store, key).await,
            Target::Grpc(c, store) => grpc_get(c, store, key).await,
            Target::Http(c, port, store) => http_get(c, *port, store, key).await,
        }
    }
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
    let secs: f64 = support::number_arg(5.0);
    let rate_per_s: u64 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(500);
    support::pin_self_to_cpu0();
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
    let gate = start_fngate(&catalog(&cases), "1");
    let pid = gate.proc.0.id();
    runtime.block_on(async {
        let grpc = DaprClient::connect(format!("http://127.0.0.1:{}", gate.grpc)).await.unwrap();
        let http = http_client();
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
