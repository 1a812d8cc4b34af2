//! Kubernetes mode through the real binary, against an in-process test double of the
//! API server (`common/kube_api.rs`: list/watch with resourceVersions, bookmarks, 410
//! Gone, the status subresource, conflicts). No API server can run on these machines.

mod common;
#[path = "common/kube_api.rs"]
mod kube_api;

use common::*;
use kube_api::FakeApiServer;

const FUNCTION_API: &str = "core.openfunction.io/v1beta2";

struct Cluster {
    api: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let api = FakeApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.kubeconfig(dir.path());
        Cluster {
            api,
            dir,
            kubeconfig,
        }
    }

    fn settings(&self, extra: &str) -> String {
        format!(
            "  kubernetes:\n    enabled: true\n    kubeconfig: {}\n{extra}",
            self.kubeconfig.display()
        )
    }

    fn gate(&self, extra: &str) -> Fngate {
        Fngate::start_catalog(self.dir.path(), "", &self.settings(extra), "", true)
    }

    /// A Function served by a real HTTP function on `echo`.
    fn http_function(&self, name: &str, route: &str, echo: &Echo) {
        self.api.apply(&function_yaml("default", name, route));
        self.api
            .apply(&endpoint_slice("default", name, &[echo.addr], true));
    }
}

fn status_of(api: &FakeApiServer, name: &str) -> serde_json::Value {
    api.get(FUNCTION_API, "Function", "default", name)
        .map(|f| f["status"].clone())
        .unwrap_or_default()
}

fn hostnames(hosts: &[&str]) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "        route:\n          hostnames: [{}]\n",
        list.join(", ")
    )
}

#[test]
fn functions_from_the_api_are_served_and_follow_updates_and_deletes() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", "", &echo);
    let gate = cluster.gate("");
    assert_eq!(gate.get("hello.default.ofn.io", "/").status, 200);

    let before = gate.revision();
    cluster.api.apply(&function_yaml(
        "default",
        "hello",
        &hostnames(&["new.example.com"]),
    ));
    gate.wait_for_revision_after(before);
    // Hostnames without rules: the route is PathPrefix /<namespace>/<name>.
    assert_eq!(gate.get("new.example.com", "/default/hello").status, 200);
    assert_eq!(gate.get("hello.default.ofn.io", "/").status, 404);

    let before = gate.revision();
    cluster
        .api
        .delete(FUNCTION_API, "Function", "default", "hello");
    gate.wait_for_revision_after(before);
    assert_eq!(gate.get("new.example.com", "/default/hello").status, 404);
}

#[test]
fn removing_a_function_stops_its_event_trigger() {
    let cluster = Cluster::new();
    let app = DaprApp::start("grpc", "", "ps:k8s.orders:/orders");
    cluster.api.apply(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ps\n  namespace: default\nspec:\n  type: pubsub.jetstream\n  version: v1\n  metadata:\n    - name: natsURL\n      value: nats://127.0.0.1:4222\n",
    );
    cluster.api.apply(&dapr_function_yaml(
        "orders",
        "ps",
        Some("k8s.orders"),
        "grpc",
        app.addr.port(),
        "",
    ));
    let gate = cluster.gate("");
    let connected = "fngate_broker_connected{broker=\"jetstream\",function=\"orders\"";
    gate.wait_until(
        || gate.metric_opt(connected) == Some(1.0),
        "the trigger's consumer connected",
    );
    cluster
        .api
        .delete(FUNCTION_API, "Function", "default", "orders");
    gate.wait_until(
        || {
            gate.triggers()["triggers"]
                .as_array()
                .is_some_and(|t| t.is_empty())
        },
        "the trigger gone from the plan",
    );
    gate.wait_until(
        || gate.metric_opt(connected) == Some(0.0),
        "the consumer stopped",
    );
}

#[test]
fn older_and_duplicate_events_change_nothing() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", &hostnames(&["v1.example.com"]), &echo);
    let gate = cluster.gate("");
    let old = cluster
        .api
        .get(FUNCTION_API, "Function", "default", "hello")
        .unwrap();
    let before = gate.revision();
    cluster.api.apply(&function_yaml(
        "default",
        "hello",
        &hostnames(&["v2.example.com"]),
    ));
    let revision = gate.wait_for_revision_after(before);
    let current = cluster
        .api
        .get(FUNCTION_API, "Function", "default", "hello")
        .unwrap();

    // A lagging cache replays the old version, then the current one again.
    let stale = "fngate_catalog_events_total{kind=\"Function\",outcome=\"stale\"}";
    cluster.api.inject("MODIFIED", &old.to_string());
    cluster.api.inject("MODIFIED", &current.to_string());
    gate.wait_until(
        || gate.metric_opt(stale) >= Some(2.0),
        "both events seen as stale",
    );
    assert_eq!(gate.revision(), revision);
    assert_eq!(gate.get("v2.example.com", "/default/hello").status, 200);
    assert_eq!(gate.get("v1.example.com", "/default/hello").status, 404);

    // A late ADDED for a Function deleted since does not bring it back.
    cluster
        .api
        .delete(FUNCTION_API, "Function", "default", "hello");
    gate.wait_for_revision_after(revision);
    cluster.api.inject("ADDED", &current.to_string());
    gate.wait_until(
        || gate.metric_opt(stale) >= Some(3.0),
        "the late ADDED seen as stale",
    );
    assert_eq!(gate.get("v2.example.com", "/default/hello").status, 404);
}

#[test]
fn status_only_and_metadata_only_updates_do_not_recompile() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", "", &echo);
    let gate = cluster.gate("");
    let revision = gate.revision();
    let compiles = gate.metric("fngate_reloads_total{outcome=\"success\"}");
    let unchanged = "fngate_catalog_events_total{kind=\"Function\",outcome=\"unchanged\"}";

    cluster.api.set_status(
        FUNCTION_API,
        "Function",
        "default",
        "hello",
        serde_json::json!({"build": {"state": "Skipped"}, "route": {"hosts": ["x"]}}),
    );
    let mut current = cluster
        .api
        .get(FUNCTION_API, "Function", "default", "hello")
        .unwrap();
    current["metadata"]["managedFields"] =
        serde_json::json!([{"manager": "kubectl", "operation": "Update"}]);
    cluster.api.apply(&current.to_string());
    gate.wait_until(
        || gate.metric_opt(unchanged) >= Some(2.0),
        "both updates seen",
    );
    assert_eq!(gate.revision(), revision);
    assert_eq!(
        gate.metric("fngate_reloads_total{outcome=\"success\"}"),
        compiles
    );
}

#[test]
fn an_expired_watch_relists_while_the_plan_keeps_serving_and_drops_what_was_deleted() {
    let cluster = Cluster::new();
    let echo_a = Echo::start("a", "default");
    let echo_b = Echo::start("b", "default");
    cluster.http_function("a", "", &echo_a);
    cluster.http_function("b", "", &echo_b);
    let gate = cluster.gate("");
    assert_eq!(gate.get("b.default.ofn.io", "/").status, 200);
    let lists_before = cluster.api.lists();

    // The API server goes away; meanwhile b is deleted and history is compacted, so
    // the watch cannot resume (410 Gone) and a relist is the only way to learn it.
    cluster.api.set_available(false);
    cluster.api.delete(FUNCTION_API, "Function", "default", "b");
    cluster.api.compact();
    assert_eq!(gate.get("a.default.ofn.io", "/").status, 200);
    assert_eq!(gate.get("b.default.ofn.io", "/").status, 200);

    let before = gate.revision();
    cluster.api.set_available(true);
    gate.wait_for_revision_after(before);
    assert!(cluster.api.lists() > lists_before, "relisted");
    assert_eq!(gate.get("b.default.ofn.io", "/").status, 404);
    assert_eq!(gate.get("a.default.ofn.io", "/").status, 200);
    assert!(gate.ready());
}

#[test]
fn ready_only_after_every_kind_has_listed_and_an_uninstalled_crd_does_not_block() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", "", &echo);
    cluster.api.unserve("components");
    cluster.api.set_available(false);
    let gate = Fngate::start_catalog(cluster.dir.path(), "", &cluster.settings(""), "", false);
    assert!(!gate.ready());
    cluster.api.set_available(true);
    gate.wait_until(|| gate.ready(), "ready once the lists arrive");
    assert_eq!(gate.get("hello.default.ofn.io", "/").status, 200);
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(
        diagnostics.contains("dapr.io/v1alpha1/components"),
        "{diagnostics}"
    );
}

#[test]
fn a_malformed_function_is_reported_and_its_last_good_version_keeps_serving() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", "", &echo);
    let gate = cluster.gate("");
    let before = gate.revision();
    cluster.api.apply(&function_yaml(
        "default",
        "hello",
        "        route:\n          hostnames: 42\n",
    ));
    gate.wait_for_revision_after(before);
    assert_eq!(gate.get("hello.default.ofn.io", "/").status, 200);
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(
        diagnostics.contains("Function default/hello") && diagnostics.contains("hostnames"),
        "{diagnostics}"
    );
}

/// Converged: several lease renewals (passes of the writer) later, no more writes.
fn assert_no_status_writes_for_four_lease_renewals(cluster: &Cluster, gate: &Fngate) {
    let writes = cluster.api.status_writes();
    let renewals = cluster.api.writes_to("/leases/");
    gate.wait_until(
        || cluster.api.writes_to("/leases/") >= renewals + 4,
        "four more lease renewals",
    );
    assert_eq!(
        cluster.api.status_writes(),
        writes,
        "status written again while idle"
    );
}

const STATUS: &str = "    status:\n      write: true\n      lease_duration: 2s\n";

#[test]
fn status_converges_then_stays_quiet_and_follows_spec_changes() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", "", &echo);
    // Rejected: a rule with an invalid regular expression.
    cluster.api.apply(&function_yaml(
        "default",
        "broken",
        "        route:\n          rules:\n            - matches:\n                - path: {type: RegularExpression, value: \"(\"}\n",
    ));
    let gate = cluster.gate(STATUS);
    gate.wait_until(
        || status_of(&cluster.api, "hello")["route"]["conditions"][0]["status"] == "True",
        "hello's route status written",
    );
    let status = status_of(&cluster.api, "hello");
    assert_eq!(
        status["route"]["hosts"],
        serde_json::json!(["hello.default.ofn.io", "hello.default.svc.cluster.local"])
    );
    assert_eq!(status["route"]["paths"][0]["value"], "/");
    assert_eq!(status["route"]["conditions"][0]["observedGeneration"], 1);
    assert_eq!(status["addresses"][0]["type"], "External");
    assert_eq!(
        status["addresses"][0]["value"],
        "http://hello.default.ofn.io/"
    );
    gate.wait_until(
        || status_of(&cluster.api, "broken")["route"]["conditions"][0]["status"] == "False",
        "broken's rejection written",
    );
    let broken = status_of(&cluster.api, "broken");
    assert_eq!(broken["route"]["conditions"][0]["reason"], "Invalid");

    assert_no_status_writes_for_four_lease_renewals(&cluster, &gate);

    // A spec change is reflected once, with the new generation.
    cluster.api.apply(&function_yaml(
        "default",
        "hello",
        &hostnames(&["new.example.com"]),
    ));
    gate.wait_until(
        || status_of(&cluster.api, "hello")["route"]["conditions"][0]["observedGeneration"] == 2,
        "status of generation 2",
    );
    assert_eq!(
        status_of(&cluster.api, "hello")["route"]["hosts"][0],
        "new.example.com"
    );
    assert_no_status_writes_for_four_lease_renewals(&cluster, &gate);
}

#[test]
fn of_two_replicas_one_writes_status_and_the_other_takes_over_when_it_dies() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", "", &echo);
    let first = cluster.gate(STATUS);
    let second = cluster.gate(STATUS);
    let leader = "fngate_status_leader ";
    let leaders = || first.metric(leader) + second.metric(leader);
    first.wait_until(|| leaders() == 1.0, "one leader");
    let renewals = cluster.api.writes_to("/leases/");
    first.wait_until(
        || cluster.api.writes_to("/leases/") >= renewals + 3,
        "three more lease renewals",
    );
    assert_eq!(leaders(), 1.0);
    let (leader_gate, other) = if first.metric(leader) == 1.0 {
        (first, second)
    } else {
        (second, first)
    };
    leader_gate.kill_hard();
    other.wait_until(
        || other.metric_opt(leader) == Some(1.0),
        "the other replica leads",
    );
    // And it writes: a new Function gets its status from the new leader.
    let echo2 = Echo::start("late", "default");
    cluster.http_function("late", "", &echo2);
    other.wait_until(
        || status_of(&cluster.api, "late")["route"]["conditions"][0]["status"] == "True",
        "status of a Function added after the takeover",
    );
}

#[test]
fn the_deploy_manifests_settings_load_and_enable_kubernetes_mode_with_status() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/configmap.yaml"
    ))
    .unwrap();
    let configmap: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let settings_text = configmap["data"]["fngate.yaml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fngate.yaml");
    std::fs::write(&file, settings_text).unwrap();
    let settings = fngate::config::Settings::load(&file).unwrap();
    let kube = settings.kubernetes.expect("kubernetes mode");
    assert!(kube.status.is_some());
    assert!(kube.kubeconfig.is_none(), "in-cluster configuration");
    assert_eq!(settings.listen_admin.ip().to_string(), "0.0.0.0");
    // The drain ends before Kubernetes' SIGKILL.
    let deployment: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/deployment.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(settings.shutdown_drain < std::time::Duration::from_secs(grace));
}

#[test]
fn a_status_writer_stopped_gracefully_gives_up_its_lease() {
    let cluster = Cluster::new();
    let echo = Echo::start("hello", "default");
    cluster.http_function("hello", "", &echo);
    let gate = cluster.gate(STATUS);
    gate.wait_until(
        || gate.metric_opt("fngate_status_leader ") == Some(1.0),
        "leading",
    );
    let holder = || {
        cluster
            .api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "default",
                "fngate-status-writer",
            )
            .map(|l| {
                l["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
    };
    assert!(holder().is_some_and(|h| !h.is_empty()));
    gate.stop_gracefully();
    assert_eq!(holder().as_deref(), Some(""), "the lease was not released");
}

#[test]
fn of_two_replicas_one_fires_each_cron_tick_and_the_other_takes_over_when_it_dies() {
    let cluster = Cluster::new();
    let app = DaprApp::start("grpc", "tick", "");
    cluster.api.apply(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: tick\n  namespace: default\nspec:\n  type: bindings.cron\n  version: v1\n  metadata:\n    - name: schedule\n      value: \"@every 1s\"\n",
    );
    cluster.api.apply(&dapr_function_yaml(
        "ticker",
        "tick",
        None,
        "grpc",
        app.addr.port(),
        "",
    ));
    cluster
        .api
        .apply(&endpoint_slice("default", "ticker", &[app.addr], true));
    let replica = |id: &str| {
        cluster.gate(&format!(
            "    status:\n      lease_duration: 2s\n      identity: {id}\n"
        ))
    };
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    let fired = |gate: &Fngate| {
        gate.metric_or_zero("fngate_events_total{function=\"ticker\",namespace=\"default\",outcome=\"success\",trigger=\"tick\"}")
    };
    app.wait_for("four ticks", |e| e.len() >= 4);
    // One replica fires, the other does not.
    let (firing, other) = if fired(&a) > 0.0 { (a, b) } else { (b, a) };
    assert_eq!(fired(&other), 0.0, "both replicas fired");
    firing.kill_hard();
    let at_kill = app.events().len();
    app.wait_for("three ticks from the other replica", |e| {
        e.len() >= at_kill + 3
    });
    other.wait_until(|| fired(&other) >= 3.0, "the other replica's ticks counted");
    // Each tick once across both: no two deliveries of one second.
    let events = app.events();
    let mut seconds: Vec<&str> = events
        .iter()
        .map(|e| &e["metadata"]["readTimeUTC"].as_str().unwrap()[..19])
        .collect();
    let total = seconds.len();
    seconds.dedup();
    assert_eq!(seconds.len(), total, "a tick delivered twice: {events:#?}");
}

#[test]
fn a_token_survives_an_api_server_outage_and_stops_at_the_plan_after_its_secret_is_deleted() {
    let cluster = Cluster::new();
    let secret =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: caller-token\n  namespace: default\nstringData:\n  token: tok-caller\n";
    cluster.api.apply(secret);
    cluster.api.apply(&format!(
        "{}    annotations:\n      dapr.io/api-token-secret: caller-token\n",
        function_yaml("default", "caller", "")
    ));
    let dapr_http = free_port();
    let gate = Fngate::start_catalog(
        cluster.dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        &cluster.settings(""),
        "",
        true,
    );
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{dapr_http}").parse().unwrap();
    let metadata = || {
        request(
            dapr,
            "GET",
            "localhost",
            "/v1.0/metadata",
            &[("dapr-api-token", "tok-caller")],
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(metadata(), 200);

    // An outage is not a revocation: the watch keeps its last list.
    let lists = cluster.api.lists();
    cluster.api.set_available(false);
    cluster.api.compact();
    assert_eq!(metadata(), 200, "while the API server is away");
    cluster.api.set_available(true);
    gate.wait_until(|| cluster.api.lists() > lists, "a relist after the outage");
    assert_eq!(metadata(), 200, "after the relist");

    // A deleted Secret is: the next plan refuses the token.
    let before = gate.revision();
    cluster
        .api
        .delete("v1", "Secret", "default", "caller-token");
    gate.wait_for_revision_after(before);
    assert_eq!(metadata(), 401);
}

#[test]
fn with_a_secret_label_selector_an_unlabelled_secret_is_never_read() {
    let cluster = Cluster::new();
    let secret = |name: &str, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\n{labels}stringData:\n  token: tok-{name}\n"
        )
    };
    cluster.api.apply(&secret(
        "allowed",
        "  labels:\n    fngate.io/dapr-secret: \"true\"\n",
    ));
    cluster.api.apply(&secret("private", ""));
    for (function, token_secret) in [("reader", "allowed"), ("snoop", "private")] {
        cluster.api.apply(&format!(
            "{}    annotations:\n      dapr.io/api-token-secret: {token_secret}\n",
            function_yaml("default", function, "")
        ));
    }
    let dapr_http = free_port();
    let gate = Fngate::start_catalog(
        cluster.dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        &cluster.settings("    secret_label_selector: fngate.io/dapr-secret=true\n"),
        "",
        true,
    );
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{dapr_http}").parse().unwrap();
    let metadata = |token: &str| {
        request(
            dapr,
            "GET",
            "localhost",
            "/v1.0/metadata",
            &[("dapr-api-token", token)],
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(metadata("tok-allowed"), 200);
    // The unlabelled Secret never reached fngate: its Function is told it is not there.
    assert_eq!(metadata("tok-private"), 401);
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(
        diagnostics.contains("Secret default/private not found"),
        "{diagnostics}"
    );
}

#[test]
fn the_kubernetes_secret_store_reads_the_secret_asked_for_from_the_api_server() {
    let cluster = Cluster::new();
    // `data`, as an API server answers (it turns `stringData` into `data` on write).
    let secret = |namespace: &str, name: &str, labels: &str, value: &str| {
        use base64::Engine as _;
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{labels}data:\n  value: {value}\n"
        )
    };
    let labelled = "  labels:\n    fngate.io/dapr-secret: \"true\"\n";
    cluster.api.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: reader-token\n  namespace: default\n{labelled}stringData:\n  token: tok-reader\n"
    ));
    // Not labelled: never in fngate's catalog, yet the store reads it when asked.
    cluster
        .api
        .apply(&secret("default", "db-creds", "", "from-the-api"));
    cluster
        .api
        .apply(&secret("elsewhere", "theirs", "", "not-yours"));
    cluster.api.apply(&format!(
        "{}    annotations:\n      dapr.io/api-token-secret: reader-token\n",
        function_yaml("default", "reader", "")
    ));
    let dapr_http = free_port();
    let _gate = Fngate::start_catalog(
        cluster.dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        &cluster.settings("    secret_label_selector: fngate.io/dapr-secret=true\n"),
        "",
        true,
    );
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{dapr_http}").parse().unwrap();
    let get = |path: &str| {
        request(
            dapr,
            "GET",
            "localhost",
            path,
            &[("dapr-api-token", "tok-reader")],
            b"",
        )
        .unwrap()
    };
    let r = get("/v1.0/secrets/kubernetes/db-creds");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap(),
        serde_json::json!({"value": "from-the-api"})
    );
    // A later change is read at the next call: nothing is cached.
    cluster
        .api
        .apply(&secret("default", "db-creds", "", "rotated"));
    let r = get("/v1.0/secrets/kubernetes/db-creds");
    assert!(String::from_utf8_lossy(&r.body).contains("rotated"));
    let r = get("/v1.0/secrets/kubernetes/missing");
    assert_eq!(r.status, 500);
    let r = get("/v1.0/secrets/kubernetes/theirs?metadata.namespace=elsewhere");
    assert_eq!(r.status, 500);
    assert!(!String::from_utf8_lossy(&r.body).contains("not-yours"));
    let r = get("/v1.0/secrets/kubernetes/bulk");
    let bulk: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(bulk["db-creds"]["value"], "rotated", "{bulk}");
    assert!(bulk.get("theirs").is_none());
}
