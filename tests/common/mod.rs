//! Test harness: real processes on loopback ports chosen at run time — the `fngate`
//! binary and the `echo` example function — and a small HTTP/1.1 client.
#![allow(dead_code)]

pub mod kafka;
pub mod redis_server;
pub mod sql_servers;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port nothing listens on, never handed to two test processes at once, and outside the
/// kernel's ephemeral range (32768-60999): a port from `bind(:0)` could be handed to a
/// concurrent test too, or become some outgoing connection's local port, before the
/// process meant to listen on it binds it. The test runner runs tests in processes side by
/// side: each port is claimed by a lock on a file of its own, held until this process ends
/// (the kernel lets go of it when the process dies, however it dies).
pub fn free_port() -> u16 {
    static STATE: Mutex<(u64, Vec<std::fs::File>)> = Mutex::new((0, Vec::new()));
    let mut state = STATE.lock().unwrap();
    if state.0 == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        state.0 = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    let claims = std::env::temp_dir().join("fngate-test-ports");
    std::fs::create_dir_all(&claims).unwrap();
    loop {
        // xorshift: a different sequence per process.
        let mut x = state.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.0 = x;
        let port = 20_000 + (x % 12_000) as u16;
        let claim = std::fs::File::create(claims.join(port.to_string())).unwrap();
        if claim.try_lock().is_err() {
            continue; // this process or another one has it
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            state.1.push(claim);
            return port;
        }
    }
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_fngate"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `echo` example, a real HTTP function process.
pub struct Echo {
    child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Echo {
    pub fn start(service: &str, namespace: &str) -> Echo {
        Echo::start_on(service, namespace, "127.0.0.1:0")
    }

    pub fn start_on(service: &str, namespace: &str, listen: &str) -> Echo {
        Echo::start_with(service, namespace, listen, &[])
    }

    /// `extra`: more of echo's flags, e.g. `--ready-after 300ms`.
    pub fn start_with(service: &str, namespace: &str, listen: &str, extra: &[&str]) -> Echo {
        let bin = target_dir().join("examples").join("echo");
        assert!(
            bin.exists(),
            "{} is missing: `cargo test` builds examples; run it through cargo",
            bin.display()
        );
        let mut child = Command::new(bin)
            .args([
                "--listen",
                listen,
                "--service",
                service,
                "--namespace",
                namespace,
                "--log",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start echo");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("echo printed nothing").unwrap();
        let addr = first
            .strip_prefix("listening on ")
            .expect("echo's first line")
            .parse()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Echo { child, addr, log }
    }

    pub fn requests_seen(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An EndpointSlice document for `service` pointing at `addrs`.
pub fn endpoint_slice(namespace: &str, service: &str, addrs: &[SocketAddr], ready: bool) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-slice\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n"
    );
    for a in addrs {
        s.push_str(&format!(
            "  - addresses: [\"{}\"]\n    conditions:\n      ready: {ready}\n",
            a.ip()
        ));
    }
    let port = addrs.first().map(|a| a.port()).unwrap_or(8080);
    s.push_str(&format!("ports:\n  - name: http\n    port: {port}\n"));
    s
}

/// The fngate binary serving a catalog directory.
pub struct Fngate {
    child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    _settings_dir: tempfile::TempDir,
}

impl Fngate {
    pub fn start(catalog: &Path) -> Fngate {
        Fngate::start_with(catalog, "")
    }

    /// `extra` is appended to the settings file (YAML).
    pub fn start_with(catalog: &Path, extra: &str) -> Fngate {
        Fngate::start_full(catalog, "", extra)
    }

    /// `listen_extra` goes inside the `listen:` block, `extra` after everything.
    ///
    /// Ports are picked free and released before fngate binds them, so another process
    /// can take one in between; a start whose HTTP listener is not fngate's is retried
    /// on new ports.
    pub fn start_full(catalog: &Path, listen_extra: &str, extra: &str) -> Fngate {
        Fngate::start_catalog(catalog, listen_extra, "", extra, true)
    }

    /// `catalog_extra` goes inside the `catalog:` block (e.g. a `kubernetes:` block);
    /// `wait_ready`: return only once `/readyz` says ready.
    pub fn start_catalog(
        catalog: &Path,
        listen_extra: &str,
        catalog_extra: &str,
        extra: &str,
        wait_ready: bool,
    ) -> Fngate {
        for _ in 0..5 {
            let gate = Fngate::spawn(catalog, listen_extra, catalog_extra, extra, wait_ready);
            if listens_on(gate.child.id(), gate.http.port()) {
                return gate;
            }
        }
        panic!("fngate did not get its HTTP port in 5 tries");
    }

    fn spawn(
        catalog: &Path,
        listen_extra: &str,
        catalog_extra: &str,
        extra: &str,
        wait_ready: bool,
    ) -> Fngate {
        let settings_dir = tempfile::tempdir().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let settings = settings_dir.path().join("fngate.yaml");
        // fngate serves the Dapr API on 50001/3500 by default; tests that want it name ports.
        // A test naming one keeps the other off too, so parallel fngates do not race for it.
        let mut listen_extra = listen_extra.to_owned();
        for api in ["dapr_grpc", "dapr_http"] {
            if !listen_extra.contains(api) {
                listen_extra.push_str(&format!("  {api}: \"\"\n"));
            }
        }
        std::fs::write(
            &settings,
            format!(
                "listen:\n  http: {http}\n  admin: {admin}\n{listen_extra}catalog:\n  dir: {}\n{catalog_extra}threads: 2\ntimeouts:\n  reload_debounce: 20ms\n{extra}",
                catalog.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fngate"))
            .args(["run", "--config"])
            .arg(&settings)
            .env(
                "RUST_LOG",
                std::env::var("FNGATE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("start fngate");
        let gate = Fngate {
            child,
            http,
            admin,
            dir: catalog.to_path_buf(),
            _settings_dir: settings_dir,
        };
        if wait_ready {
            gate.wait_until(|| gate.ready(), "fngate ready");
        } else {
            gate.wait_until(
                || admin_get(admin, "/healthz").is_ok(),
                "fngate admin listening",
            );
        }
        gate
    }

    pub fn ready(&self) -> bool {
        admin_get(self.admin, "/readyz")
            .map(|r| r.status == 200)
            .unwrap_or(false)
    }

    pub fn wait_until(&self, mut cond: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn routes(&self) -> serde_json::Value {
        let r = admin_get(self.admin, "/routes").expect("GET /routes");
        serde_json::from_slice(&r.body).expect("/routes is JSON")
    }

    pub fn revision(&self) -> u64 {
        self.routes()["revision"].as_u64().unwrap()
    }

    /// Waits until a plan newer than `after` is serving, and returns its revision.
    pub fn wait_for_revision_after(&self, after: u64) -> u64 {
        let mut rev = 0;
        self.wait_until(
            || {
                rev = self.revision();
                rev > after
            },
            "a new plan revision",
        );
        rev
    }

    pub fn metrics(&self) -> String {
        String::from_utf8(admin_get(self.admin, "/metrics").unwrap().body).unwrap()
    }

    pub fn get(&self, host: &str, path: &str) -> Response {
        request(self.http, "GET", host, path, &[], b"").expect("request to fngate")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (Kubernetes' pod shutdown) without waiting.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "SIGTERM to fngate");
    }

    /// Waits for the process to exit (60 s at most) and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for fngate") {
                return status;
            }
            assert!(Instant::now() < deadline, "fngate did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (a rolling update, a node drain), and waits for the process to exit.
    pub fn stop_gracefully(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Fngate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` holds the listening socket of 127.0.0.1:`port` (Linux /proc).
/// Checked without sending a request, so no test metric is disturbed.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(1) == Some(&local.as_str()) && cols.get(3) == Some(&"0A"))
                .then(|| cols.get(9).map(|s| s.to_string()))?
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            let t = target.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
}

pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", "localhost", path, &[], b"")
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names; repeated headers keep every value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// From the echo function's JSON: the values the backend saw for a header, joined by `,`.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        let v = self.json();
        let arr = v["headers"][name.to_ascii_lowercase()].as_array()?.clone();
        Some(
            arr.iter()
                .map(|x| x.as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !host.is_empty() {
        head.push_str(&format!("Host: {host}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    read_response(&mut BufReader::new(stream), method == "HEAD")
}

pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        reader.read_line(&mut l)?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Writes `name` in the catalog atomically (write + rename), as editors and ConfigMaps do.
pub fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

pub fn function_yaml(namespace: &str, name: &str, route: &str) -> String {
    format!(
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  serving:\n    triggers:\n      http:\n        port: 8080\n{route}"
    )
}

/// A catalog directory with Function `default/hello` (`route`: as for `function_yaml`)
/// served by `addrs`, all ready.
pub fn hello_catalog(route: &str, addrs: &[SocketAddr]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hello.yaml"),
        function_yaml("default", "hello", route),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hello-slice.yaml"),
        endpoint_slice("default", "hello", addrs, true),
    )
    .unwrap();
    dir
}

pub fn count_by<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// A client that keeps one connection open across requests, as load generators do.
pub struct KeepAliveClient {
    reader: BufReader<TcpStream>,
}

impl KeepAliveClient {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(KeepAliveClient {
            reader: BufReader::new(s),
        })
    }

    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<Response> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.reader.get_mut().write_all(head.as_bytes())?;
        read_response(&mut self.reader, false)
    }
}

/// The `dapr_app` example: a real Dapr app (AppCallback gRPC or Dapr HTTP) that records
/// every event it receives.
pub struct DaprApp {
    child: Child,
    pub addr: SocketAddr,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl DaprApp {
    /// `topics`: `pubsub:topic[:route]`, comma-separated.
    pub fn start(protocol: &str, bindings: &str, topics: &str) -> DaprApp {
        DaprApp::start_on(protocol, "127.0.0.1:0", bindings, topics)
    }

    pub fn start_on(protocol: &str, listen: &str, bindings: &str, topics: &str) -> DaprApp {
        DaprApp::start_with(protocol, listen, bindings, topics, &[])
    }

    /// With more of `dapr_app`'s options (`--bulk`, `--hold-first-bulk`).
    pub fn start_with(
        protocol: &str,
        listen: &str,
        bindings: &str,
        topics: &str,
        extra: &[&str],
    ) -> DaprApp {
        let bin = target_dir().join("examples").join("dapr_app");
        assert!(
            bin.exists(),
            "{} is missing: run the tests through cargo",
            bin.display()
        );
        let mut child = Command::new(bin)
            .args([
                "--protocol",
                protocol,
                "--listen",
                listen,
                "--bindings",
                bindings,
                "--topics",
                topics,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dapr_app");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("dapr_app printed nothing").unwrap();
        let addr = first
            .strip_prefix("listening on ")
            .expect("dapr_app's first line")
            .parse()
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(json) = line.strip_prefix("EVENT ") {
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_str(json).expect("EVENT line is JSON"));
                }
            }
        });
        DaprApp {
            child,
            addr,
            events,
        }
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until `cond` holds for the events received so far.
    pub fn wait_for(
        &self,
        what: &str,
        mut cond: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = self.events();
            if cond(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; received {} events: {:#?}",
                events.len(),
                events.iter().rev().take(5).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaprApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The data of every event the app accepted (answer SUCCESS), in arrival order.
pub fn accepted_data(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["answer"] == "SUCCESS")
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A Function whose only trigger is the Dapr component `component` (on `topic`, when set),
/// delivered to `app_port` with `protocol`; `inline` is appended under `spec.serving`.
pub fn dapr_function_yaml(
    name: &str,
    component: &str,
    topic: Option<&str>,
    protocol: &str,
    app_port: u16,
    inline: &str,
) -> String {
    let topic = topic
        .map(|t| format!(", topic: \"{t}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  serving:\n    annotations:\n      dapr.io/app-protocol: {protocol}\n      dapr.io/app-port: \"{app_port}\"\n    triggers:\n      dapr:\n        - {{name: {component}{topic}}}\n{inline}"
    )
}

/// The platform starts the `cold_function` `name` of `dir` at `addr`: an echo backend
/// there, and its EndpointSlice turned ready.
pub fn start_cold_function(dir: &Path, name: &str, addr: SocketAddr) -> Echo {
    let echo = Echo::start_on(name, "default", &addr.to_string());
    write_atomically(
        dir,
        "slice.yaml",
        &endpoint_slice("default", name, &[echo.addr], true),
    );
    echo
}

/// Writes Function `name` whose only endpoint is listed but not ready, at an address where
/// nothing listens yet (a function scaled to zero); returns that address.
pub fn cold_function(dir: &Path, name: &str) -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_atomically(dir, "fn.yaml", &function_yaml("default", name, ""));
    write_atomically(
        dir,
        "slice.yaml",
        &endpoint_slice("default", name, &[addr], false),
    );
    addr
}

/// `yaml` (one object) with `metadata.annotations[key] = value` added.
pub fn with_annotation(yaml: &str, key: &str, value: &str) -> String {
    yaml.replacen(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    {key}: \"{value}\"\n"),
        1,
    )
}

/// A unique suffix for broker names, so test runs never share streams, topics or groups.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

impl Fngate {
    /// SIGKILL: no graceful stop, no final commit.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn triggers(&self) -> serde_json::Value {
        let r = admin_get(self.admin, "/triggers").expect("GET /triggers");
        serde_json::from_slice(&r.body).expect("/triggers is JSON")
    }

    /// The value of the first metric line starting with `prefix` (name and labels), or
    /// None while no such series is exported (for waits on a series still to appear).
    pub fn metric_opt(&self, prefix: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The value of a series that must be exported: an absent one (a renamed metric or
    /// label) fails the test instead of reading as 0.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metric_opt(prefix)
            .unwrap_or_else(|| panic!("no metric series {prefix}… is exported"))
    }

    /// A counter series never incremented is not exported: 0 then, but only while its
    /// metric family is (so a renamed metric still fails).
    #[allow(dead_code)] // not every test binary uses it
    pub fn metric_or_zero(&self, prefix: &str) -> f64 {
        let family = prefix.split(['{', ' ']).next().unwrap();
        let text = self.metrics();
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "metric family {family} is not exported at all"
        );
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Successful event deliveries this replica made, from its metrics.
    #[allow(dead_code)] // not every test binary uses it
    pub fn events_delivered(&self) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("fngate_events_total{") && l.contains("outcome=\"success\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// fngate's Dapr gRPC API as a function sees it: the dapr crate's generated client,
/// connected once the listener answers.
pub fn dapr_client(
    rt: &tokio::runtime::Runtime,
    port: u16,
) -> dapr::dapr::proto::runtime::v1::dapr_client::DaprClient<tonic::transport::Channel> {
    use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match DaprClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "gRPC API not listening: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// A Dapr API request carrying `token` as every Dapr SDK sends it.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("dapr-api-token", token.parse().unwrap());
    r
}

/// Calls `send(i)` for i = 0, 1, … until `running` turns false, pausing 20 ms after every
/// `batch` sends so the stream keeps flowing while replicas come and go; how many were sent.
#[allow(dead_code)] // not every test binary uses it
pub fn send_paced_until(
    running: &std::sync::atomic::AtomicBool,
    batch: usize,
    mut send: impl FnMut(usize),
) -> usize {
    let mut i = 0;
    while running.load(std::sync::atomic::Ordering::Relaxed) {
        send(i);
        i += 1;
        if i % batch == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    i
}

/// A self-signed certificate for `hello.default.ofn.io` and its key, as PEM files in `dir`.
pub fn self_signed_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    self_signed(dir, "hello.default.ofn.io", "key.pem", "cert.pem");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// `openssl req -x509`: a self-signed certificate for `cn` (a day long) and its key, as
/// files `key` and `cert` in `dir`.
fn self_signed(dir: &std::path::Path, cn: &str, key: &str, cert: &str) {
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &subject,
            "-keyout", key, "-out", cert,
        ],
    );
}

pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate it signed for 127.0.0.1 (a self-signed leaf is not a
/// valid chain for rustls): (CA, certificate, key).
pub fn ca_and_server_cert(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    self_signed(dir, "fngate test CA", "ca.key", "ca.pem");
    signed_by_ca(
        dir,
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A client certificate (CN `client`) signed by the CA `ca_and_server_cert` made in `dir`:
/// (certificate, key).
pub fn client_cert_from_ca(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    signed_by_ca(
        dir,
        "client",
        "client",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    (dir.join("client.pem"), dir.join("client.key"))
}

/// `<name>.key` and `<name>.pem` in `dir`: a key and an X.509 v3 certificate for `cn` with
/// `extensions`, signed by `ca.pem`/`ca.key` there (rustls refuses a v1 certificate).
fn signed_by_ca(dir: &std::path::Path, name: &str, cn: &str, extensions: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.cnf"),
    );
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out",
            &csr,
        ],
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

impl Fngate {
    /// fngate with an HTTPS listener as well, on a self-signed certificate for
    /// `hello.default.ofn.io`; also returns the HTTPS port and the certificate's folder
    /// (keep it while fngate runs).
    pub fn start_with_tls(catalog: &Path) -> (Fngate, u16, tempfile::TempDir) {
        let certs = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed_cert(certs.path());
        let https_port = free_port();
        let gate = Fngate::start_full(
            catalog,
            &format!("  https: 127.0.0.1:{https_port}\n"),
            &format!(
                "tls:\n  cert: {}\n  key: {}\n",
                cert.display(),
                key.display()
            ),
        );
        (gate, https_port, certs)
    }
}

/// fngate serving the Dapr API of a catalog: its gRPC and HTTP ports and a runtime for
/// the tests' async clients.
pub struct DaprGate {
    pub fngate: Fngate,
    pub grpc: u16,
    pub http: SocketAddr,
    pub rt: tokio::runtime::Runtime,
}

impl DaprGate {
    pub fn start(catalog: &Path) -> DaprGate {
        let (grpc, http) = (free_port(), free_port());
        let fngate = Fngate::start_full(
            catalog,
            &format!("  dapr_grpc: 127.0.0.1:{grpc}\n  dapr_http: 127.0.0.1:{http}\n"),
            "",
        );
        let http = format!("127.0.0.1:{http}").parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let gate = DaprGate {
            fngate,
            grpc,
            http,
            rt,
        };
        gate.fngate.wait_until(
            || request(gate.http, "GET", "", "/v1.0/healthz/outbound", &[], b"").is_ok(),
            "the Dapr HTTP API listening",
        );
        gate
    }

    pub fn client(
        &self,
    ) -> dapr::dapr::proto::runtime::v1::dapr_client::DaprClient<tonic::transport::Channel> {
        dapr_client(&self.rt, self.grpc)
    }

    /// A JSON call to the Dapr HTTP API, with `token` as `dapr-api-token`.
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Response {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(t) = token {
            headers.push(("dapr-api-token", t));
        }
        request(self.http, method, "", path, &headers, body).expect("HTTP API answers")
    }
}

/// Runs a check with the official Python SDK (`args`: a script, or `-c` and code) as the
/// app of `token` against `gate`'s Dapr API, with `envs` besides; fails with its output.
#[allow(dead_code)] // not every test binary uses it
pub fn python_sdk_check(gate: &DaprGate, token: &str, args: &[&str], envs: &[(&str, &str)]) {
    let out = Command::new(python_venv())
        .args(args)
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("DAPR_GRPC_PORT", gate.grpc.to_string())
        .env("DAPR_HTTP_PORT", gate.http.port().to_string())
        .env("DAPR_API_TOKEN", token)
        .env("DAPR_HEALTH_TIMEOUT", "30")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python SDK check {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A venv with the Python packages of `tests/python/requirements.txt` (the official Dapr
/// Python SDK and grpcio), made once under the target folder; its python.
#[allow(dead_code)] // not every test binary uses it
pub fn python_venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let python = venv.join("bin").join("python");
    let requirements = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/requirements.txt");
    let marker = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(requirements).unwrap();
    // Test processes run side by side: one makes the venv, the others wait for it.
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lock = std::fs::File::create(venv.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3");
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r", requirements])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install -r {requirements} failed");
        std::fs::write(&marker, wanted).unwrap();
    }
    python
}

/// A function that answers only when the test lets it: a real HTTP/1.1 server that reads
/// each request, counts it, and answers `{"path": …}` (then `Connection: close`) — a request
/// whose path starts with `/hold` only once `release` is called. Replaces a fixed `?delay=`
/// as the window in which a test acts.
#[allow(dead_code)] // not every test binary uses it
pub struct GatedFunction {
    pub addr: SocketAddr,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

#[allow(dead_code)]
impl GatedFunction {
    pub fn start() -> GatedFunction {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (count, open) = (arrived.clone(), gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (count, open) = (count.clone(), open.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut first = String::new();
                    if reader.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let path = first.split(' ').nth(1).unwrap_or("").to_owned();
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if path.starts_with("/hold") {
                        let (released, cv) = &*open;
                        let mut released = released.lock().unwrap();
                        while !*released {
                            released = cv.wait(released).unwrap();
                        }
                    }
                    let body = serde_json::json!({ "path": path }).to_string();
                    let mut conn = conn;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        GatedFunction {
            addr,
            arrived,
            gate,
        }
    }

    /// Requests that reached the function.
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers every `/hold` request held, and every one still to come.
    pub fn release(&self) {
        let (released, cv) = &*self.gate;
        *released.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// A JetStream stream of the test's own on the machine's NATS (127.0.0.1:4222), capturing
/// `subject`, to read back what fngate published.
#[allow(dead_code)] // not every test binary uses it
pub async fn jetstream_stream(name: &str, subject: &str) -> async_nats::jetstream::stream::Stream {
    let js = async_nats::jetstream::new(
        async_nats::connect("127.0.0.1:4222")
            .await
            .expect("NATS on 127.0.0.1:4222 (scripts/services.sh)"),
    );
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A real HTTP server that records the bodies POSTed to it.
#[allow(dead_code)] // not every test binary uses it
pub fn webhook_receiver() -> (
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (addr, rx)
}

/// `tests/node` installed (`npm ci`, the official Dapr JS SDK from its lock file) once
/// under the target folder; that folder.
#[allow(dead_code)] // not every test binary uses it
pub fn node_function_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-function");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let lock_file = source.join("package-lock.json");
    let wanted = std::fs::read_to_string(&lock_file).unwrap();
    let marker = dir.join("installed.lock");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    for file in [
        "package.json",
        "package-lock.json",
        "async_function.cjs",
        "sdk_check.cjs",
    ] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm (Debian package npm, scripts/setup.sh)");
        assert!(installed.success(), "npm ci in {} failed", dir.display());
        std::fs::write(&marker, wanted).unwrap();
    }
    dir
}

/// `tests/node/async_function.cjs`: an async function as OpenFunction's Node framework runs
/// one, on the official Dapr JS SDK, serving Dapr's HTTP protocol at `listen` and calling
/// fngate's Dapr HTTP API on `dapr_http_port` with `token`.
#[allow(dead_code)]
pub struct NodeFunction {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

#[allow(dead_code)]
impl NodeFunction {
    /// `inputs`/`outputs`: JSON lists of `{name, type, topic?, operation?}`.
    pub fn start(
        listen: SocketAddr,
        dapr_http_port: u16,
        token: &str,
        inputs: &str,
        outputs: &str,
    ) -> NodeFunction {
        NodeFunction::start_mode(listen, dapr_http_port, token, inputs, outputs, false, &[])
    }

    /// An HTTP function (Knative-style): each request's body goes to `outputs`.
    pub fn start_http(
        listen: SocketAddr,
        dapr_http_port: u16,
        token: &str,
        outputs: &str,
    ) -> NodeFunction {
        NodeFunction::start_mode(listen, dapr_http_port, token, "[]", outputs, true, &[])
    }

    /// With more of the function's environment (`FUNC_PROTOCOL`, `FUNC_EMPTY_DATA`).
    pub fn start_with(
        listen: SocketAddr,
        dapr_http_port: u16,
        token: &str,
        inputs: &str,
        outputs: &str,
        env: &[(&str, &str)],
    ) -> NodeFunction {
        NodeFunction::start_mode(listen, dapr_http_port, token, inputs, outputs, false, env)
    }

    fn start_mode(
        listen: SocketAddr,
        dapr_http_port: u16,
        token: &str,
        inputs: &str,
        outputs: &str,
        http: bool,
        env: &[(&str, &str)],
    ) -> NodeFunction {
        let dir = node_function_dir();
        let mut child = Command::new("node")
            .envs(env.iter().copied())
            .env("FUNC_HTTP", if http { "1" } else { "0" })
            .arg(dir.join("async_function.cjs"))
            .current_dir(&dir)
            .env("APP_HOST", listen.ip().to_string())
            .env("APP_PORT", listen.port().to_string())
            .env("DAPR_HOST", "127.0.0.1")
            .env("DAPR_HTTP_PORT", dapr_http_port.to_string())
            .env("DAPR_API_TOKEN", token)
            .env("FUNC_INPUTS", inputs)
            .env("FUNC_OUTPUTS", outputs)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (Debian package nodejs, scripts/setup.sh)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        NodeFunction { child, lines }
    }

    /// Waits (up to 60 s) for a line starting with `kind ` and returns its JSON.
    pub fn wait_line(&self, kind: &str) -> serde_json::Value {
        let prefix = format!("{kind} ");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(json) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(&prefix))
            {
                return serde_json::from_str(json).expect("a JSON line");
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {kind}; the function printed: {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeFunction {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
