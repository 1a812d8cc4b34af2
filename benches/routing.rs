//! Route matching and compile at 10, 1,000 and 10,000 Functions.
//!
//! Peer: a raw `matchit::Router` lookup of the same request path, the floor any
//! matchit-based router pays. The ratio printed at the end is fngate's full Gateway API
//! match (host buckets, precedence lists, header/method conditions) over that floor.

use criterion::{black_box, Criterion};

// The same allocator as the fngate binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};
use fngate::routing::PlainRequest;
use std::time::{Duration, Instant};

/// A realistic catalog: every Function has its default hostnames plus a few rules with
/// path prefixes, an exact path, a header match and a method match.
pub fn catalog(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let text = format!(
                "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: fn-{i}\n  namespace: ns-{}\nspec:\n  serving:\n    triggers:\n      http:\n        port: 8080\n        route:\n          rules:\n          - matches: [{{path: {{type: PathPrefix, value: /api/v1}}}}]\n          - matches: [{{path: {{type: Exact, value: /api/v1/items/{i}}}}}]\n          - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-canary, value: \"true\"}}]}}]\n          - matches: [{{path: {{type: PathPrefix, value: /}}, method: POST}}]\n",
                i % 50
            );
            (format!("fn-{i}.yaml"), text)
        })
        .collect()
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut summary = Vec::new();
    for n in [10usize, 1_000, 10_000] {
        let files = catalog(n);
        let snapshot = snapshot_from_texts(files.iter().map(|(f, t)| (f.as_str(), t.as_str())));
        // Median of 5 compiles: the first one also pays for growing the heap.
        let mut times = Vec::new();
        let mut plan = None;
        for _ in 0..5 {
            let started = Instant::now();
            let p = compile(&snapshot, &CompileSettings::default(), None);
            times.push(started.elapsed());
            plan = Some(p);
        }
        times.sort();
        let compile_time = times[2];
        let plan = plan.unwrap();
        assert!(plan.diagnostics.is_empty());
        let i = n / 2;
        let host = format!("fn-{i}.ns-{}.ofn.io", i % 50);
        let path = "/api/v1/items/other";
        let req = PlainRequest {
            method: "GET".into(),
            headers: vec![("x-canary".into(), "true".into())],
            query: None,
        };
        assert!(plan.routes.find(&host, path, &req).is_some());

        let mut raw = matchit::Router::new();
        for j in 0..n {
            raw.insert(format!("/fn-{j}/api/v1/items/{{id}}"), j)
                .unwrap();
        }
        let raw_path = format!("/fn-{i}/api/v1/items/other");

        let name = format!("match/{n}_functions");
        c.bench_function(&name, |b| {
            b.iter(|| black_box(plan.routes.find(black_box(&host), black_box(path), &req)))
        });
        c.bench_function(&format!("raw_matchit/{n}_routes"), |b| {
            b.iter(|| black_box(raw.at(black_box(&raw_path)).ok()))
        });
        let per_match = time_per_iter(|| {
            black_box(plan.routes.find(black_box(&host), black_box(path), &req));
        });
        let per_raw = time_per_iter(|| {
            black_box(raw.at(black_box(&raw_path)).ok());
        });
        summary.push((n, per_match, per_raw, compile_time));
    }
    c.final_summary();
    println!("\nfunctions  match(ns)  raw matchit(ns)  ratio  compile median of 5 (ms)");
    for (n, m, r, ct) in summary {
        println!(
            "{n:>9}  {m:>9.1}  {r:>15.1}  {:>5.2}  {:>11.1}",
            m / r,
            ct.as_secs_f64() * 1000.0
        );
    }
}

fn time_per_iter(mut f: impl FnMut()) -> f64 {
    let iters = 2_000_000;
    let started = Instant::now();
    for _ in 0..iters {
        f();
    }
    started.elapsed().as_nanos() as f64 / iters as f64
}
