//! Compile and matching with plain values: defaults, precedence, filters, v1beta1
//! conversion, diagnostics, last-good behaviour. No processes, no sockets.

use fngate::api::Severity;
use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};
use fngate::plan::Plan;
use fngate::routing::{PathRewrite, PlainRequest};

fn plan_of(files: &[(&str, &str)]) -> Plan {
    compile(
        &snapshot_from_texts(files.iter().copied()),
        &CompileSettings::default(),
        None,
    )
}

fn get() -> PlainRequest {
    PlainRequest {
        method: "GET".into(),
        ..Default::default()
    }
}

/// `namespace/name#rule` of the rule a request reaches, or "404".
fn route(plan: &Plan, host: &str, path_and_query: &str, req: PlainRequest) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (path_and_query, None),
    };
    let req = PlainRequest { query, ..req };
    match plan.routes.find(host, path, &req) {
        Some(m) => format!(
            "{}/{}#{}",
            m.rule.function.namespace, m.rule.function.name, m.rule.rule_index
        ),
        None => "404".into(),
    }
}

fn function(name: &str, body: &str) -> String {
    format!(
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  serving:\n    triggers:\n      http:\n{body}"
    )
}

#[test]
fn a_function_without_route_gets_openfunction_default_hostnames_and_prefix_slash() {
    let plan = plan_of(&[("f.yaml", &function("hello", "        port: 8080\n"))]);
    assert!(plan.diagnostics.is_empty(), "{:?}", plan.diagnostics);
    assert_eq!(
        route(&plan, "hello.default.ofn.io", "/any/path", get()),
        "default/hello#0"
    );
    assert_eq!(
        route(&plan, "hello.default.svc.cluster.local:8080", "/", get()),
        "default/hello#0"
    );
    assert_eq!(
        route(&plan, "HELLO.default.OFN.io", "/", get()),
        "default/hello#0"
    );
    assert_eq!(route(&plan, "other.default.ofn.io", "/", get()), "404");
    let rule = plan
        .routes
        .find("hello.default.ofn.io", "/", &get())
        .unwrap()
        .rule
        .clone();
    assert_eq!(&*rule.backends[0].target.service, "hello");
    assert_eq!(rule.backends[0].target.port, Some(8080));
}

#[test]
fn hostnames_without_rules_route_by_the_path_template_and_strip_it() {
    let f = function(
        "fn1",
        "        route:\n          hostnames: [\"sample.ofn.io\"]\n",
    );
    let plan = plan_of(&[("f.yaml", &f)]);
    assert_eq!(
        route(&plan, "sample.ofn.io", "/default/fn1/x", get()),
        "default/fn1#0"
    );
    assert_eq!(
        route(&plan, "sample.ofn.io", "/default/fn1", get()),
        "default/fn1#0"
    );
    assert_eq!(route(&plan, "sample.ofn.io", "/default/fn10", get()), "404");
    assert_eq!(route(&plan, "sample.ofn.io", "/", get()), "404");
    // The in-cluster name is always added, with the same path rule.
    assert_eq!(
        route(
            &plan,
            "fn1.default.svc.cluster.local",
            "/default/fn1",
            get()
        ),
        "default/fn1#0"
    );
    let m = plan
        .routes
        .find("sample.ofn.io", "/default/fn1/x", &get())
        .unwrap();
    let rw = m.rule.rewrite().unwrap().path.as_ref().unwrap();
    assert_eq!(rw, &PathRewrite::Prefix("/".into()));
    assert_eq!(rw.apply("/default/fn1/x", m.matched_prefix), "/x");
}

#[test]
fn gateway_object_templates_and_domain_are_used() {
    let gw = "apiVersion: networking.openfunction.io/v1alpha1\nkind: Gateway\nmetadata:\n  name: openfunction\n  namespace: openfunction\nspec:\n  domain: example.com\n  clusterDomain: k8s.local\n  hostTemplate: \"{{.Name}}-{{.Namespace}}.{{.Domain}}\"\n";
    let plan = plan_of(&[
        ("gw.yaml", gw),
        ("f.yaml", &function("hello", "        port: 8080\n")),
    ]);
    assert_eq!(
        route(&plan, "hello-default.example.com", "/", get()),
        "default/hello#0"
    );
    assert_eq!(
        route(&plan, "hello.default.svc.k8s.local", "/", get()),
        "default/hello#0"
    );
    assert_eq!(route(&plan, "hello.default.ofn.io", "/", get()), "404");
}

#[test]
fn path_prefix_matches_whole_segments_only() {
    let f = function("a", "        route:\n          rules:\n          - matches: [{path: {type: PathPrefix, value: /foo/}}]\n");
    let plan = plan_of(&[("f.yaml", &f)]);
    for (path, want) in [
        ("/foo", "default/a#0"),
        ("/foo/", "default/a#0"),
        ("/foo/bar", "default/a#0"),
        ("/foobar", "404"),
        ("/", "404"),
    ] {
        assert_eq!(
            route(&plan, "a.default.ofn.io", path, get()),
            want,
            "path {path}"
        );
    }
}

#[test]
fn a_host_matches_the_same_with_a_few_paths_or_many() {
    // Path-based routing puts every Function under one host; a host's paths are a short
    // sorted list up to 16 and a matchit tree beyond, and both must route alike.
    for n in [3, 40] {
        let files: Vec<(String, String)> = (0..n)
            .map(|i| {
                let body = format!(
                    "        route:\n          hostnames: [shared.example.com]\n          rules:\n          - matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}]\n          - matches: [{{path: {{type: Exact, value: \"/p{i}/{{id}}\"}}}}]\n"
                );
                (format!("f{i}.yaml"), function(&format!("f{i}"), &body))
            })
            .collect();
        let plan = plan_of(
            &files
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect::<Vec<_>>(),
        );
        assert!(plan.diagnostics.is_empty(), "{:?}", plan.diagnostics);
        for i in [0, n / 2, n - 1] {
            for (path, want) in [
                (format!("/p{i}"), format!("default/f{i}#0")),
                (format!("/p{i}/a/b"), format!("default/f{i}#0")),
                (format!("/p{i}/{{id}}"), format!("default/f{i}#1")),
                (format!("/p{i}x"), "404".to_owned()),
            ] {
                assert_eq!(
                    route(&plan, "shared.example.com", &path, get()),
                    want,
                    "{n} paths, {path}"
                );
            }
        }
        assert_eq!(route(&plan, "shared.example.com", "/", get()), "404");
        assert_eq!(route(&plan, "other.example.com", "/p0", get()), "404");
    }
}

#[test]
fn precedence_follows_gateway_api_across_functions() {
    let a = function("a", "        route:\n          hostnames: [\"x.io\"]\n          rules:\n          - matches: [{path: {type: PathPrefix, value: /}}]\n          - matches: [{path: {type: PathPrefix, value: /api}}]\n          - matches: [{path: {type: Exact, value: /api/v1}}]\n          - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]\n          - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Version, value: \"2\"}]}]\n          - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Version, value: \"2\"}, {name: X-Beta, type: RegularExpression, value: \"y.*\"}]}]\n          - matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: debug, value: \"1\"}]}]\n          - matches: [{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}]\n");
    let b = function(
        "b",
        "        route:\n          hostnames: [\"*.x.io\"]\n          rules: [{}]\n",
    );
    let plan = plan_of(&[("a.yaml", &a), ("b.yaml", &b)]);
    let h = |pairs: &[(&str, &str)]| PlainRequest {
        method: "GET".into(),
        headers: pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        query: None,
    };
    assert_eq!(route(&plan, "x.io", "/", get()), "default/a#0");
    assert_eq!(route(&plan, "x.io", "/api/v2", get()), "default/a#1");
    assert_eq!(
        route(&plan, "x.io", "/api/v1", get()),
        "default/a#2",
        "Exact beats every prefix"
    );
    assert_eq!(
        route(&plan, "x.io", "/api/v1/", get()),
        "default/a#1",
        "Exact is exact"
    );
    let post = PlainRequest {
        method: "POST".into(),
        ..Default::default()
    };
    assert_eq!(
        route(&plan, "x.io", "/api", post),
        "default/a#3",
        "method beats headers"
    );
    assert_eq!(
        route(&plan, "x.io", "/api", h(&[("x-version", "2")])),
        "default/a#4"
    );
    assert_eq!(
        route(
            &plan,
            "x.io",
            "/api",
            h(&[("X-VERSION", "2"), ("x-beta", "yes")])
        ),
        "default/a#5",
        "more headers win"
    );
    assert_eq!(
        route(
            &plan,
            "x.io",
            "/api",
            h(&[("x-version", "2"), ("x-beta", "no")])
        ),
        "default/a#4",
        "regex is anchored"
    );
    assert_eq!(route(&plan, "x.io", "/api?debug=1", get()), "default/a#6");
    assert_eq!(
        route(&plan, "x.io", "/api?Debug=1", get()),
        "default/a#1",
        "query names are case-sensitive"
    );
    assert_eq!(
        route(&plan, "x.io", "/re/123", get()),
        "default/a#0",
        "prefix / outranks a regex"
    );
    // Wildcards: any number of labels, never the bare suffix.
    assert_eq!(route(&plan, "a.x.io", "/", get()), "default/b#0");
    assert_eq!(route(&plan, "a.b.x.io", "/", get()), "default/b#0");
}

#[test]
fn regex_paths_are_anchored_and_ties_go_to_the_oldest_function() {
    let old = "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: zz-old\n  namespace: default\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\nspec:\n  serving:\n    triggers:\n      http:\n        route:\n          hostnames: [\"t.io\"]\n          rules:\n          - matches: [{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}]\n";
    let new = "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: aa-new\n  namespace: default\n  creationTimestamp: \"2025-01-01T00:00:00Z\"\nspec:\n  serving:\n    triggers:\n      http:\n        route:\n          hostnames: [\"t.io\"]\n          rules:\n          - matches: [{path: {type: PathPrefix, value: /same}}]\n";
    let old2 = old
        .replace(
            "RegularExpression, value: \"/re/[0-9]+\"",
            "PathPrefix, value: /same",
        )
        .replace("zz-old", "zz-older");
    let plan = plan_of(&[("old.yaml", old), ("new.yaml", new), ("old2.yaml", &old2)]);
    assert_eq!(route(&plan, "t.io", "/re/42", get()), "default/zz-old#0");
    assert_eq!(route(&plan, "t.io", "/re/42x", get()), "404");
    assert_eq!(
        route(&plan, "t.io", "/same", get()),
        "default/zz-older#0",
        "oldest creationTimestamp wins over name order"
    );
}

#[test]
fn exact_hostnames_beat_wildcards_and_hostless_routes_catch_the_rest() {
    let gw = "apiVersion: networking.openfunction.io/v1alpha1\nkind: Gateway\nmetadata:\n  name: openfunction\n  namespace: openfunction\nspec:\n  hostTemplate: \"\"\n  clusterDomain: \"\"\n";
    let exact = function("exact", "        route:\n          hostnames: [\"api.x.io\"]\n          rules:\n          - matches: [{path: {type: PathPrefix, value: /v1}}]\n");
    let wild = function(
        "wild",
        "        route:\n          hostnames: [\"*.x.io\"]\n          rules: [{}]\n",
    );
    let any = function("any", "        route:\n          rules:\n          - matches: [{path: {type: Exact, value: /health}}]\n");
    let plan = plan_of(&[
        ("gw.yaml", gw),
        ("e.yaml", &exact),
        ("w.yaml", &wild),
        ("a.yaml", &any),
    ]);
    assert_eq!(
        route(&plan, "api.x.io", "/v1/users", get()),
        "default/exact#0"
    );
    assert_eq!(
        route(&plan, "api.x.io", "/v2", get()),
        "default/wild#0",
        "falls through to the wildcard"
    );
    assert_eq!(route(&plan, "other.io", "/health", get()), "default/any#0");
    assert_eq!(route(&plan, "other.io", "/", get()), "404");
}

#[test]
fn filters_compile_to_their_actions() {
    let f = function("f", "        route:\n          rules:\n          - matches: [{path: {value: /old}}]\n            filters:\n            - type: RequestRedirect\n              requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}\n          - matches: [{path: {value: /api}}]\n            filters:\n            - type: URLRewrite\n              urlRewrite: {hostname: internal, path: {type: ReplaceFullPath, replaceFullPath: /v2}}\n            - type: RequestHeaderModifier\n              requestHeaderModifier: {set: [{name: X-A, value: a}], add: [{name: X-B, value: b}], remove: [X-C]}\n            - type: ResponseHeaderModifier\n              responseHeaderModifier: {set: [{name: X-R, value: r}]}\n            - type: RequestMirror\n              requestMirror: {backendRef: {name: shadow, port: 80}}\n            backendRefs: [{name: v1, weight: 90}, {name: v2, namespace: other, port: 9000, weight: 10}]\n            timeouts: {request: 10s, backendRequest: 2s}\n");
    let plan = plan_of(&[("f.yaml", &f)]);
    assert!(plan.diagnostics.is_empty(), "{:?}", plan.diagnostics);
    let redirect = plan
        .routes
        .find("f.default.ofn.io", "/old/page", &get())
        .unwrap();
    let r = redirect.rule.redirect().unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.location(
            "http",
            "f.default.ofn.io",
            None,
            "/old/page",
            Some("a=1"),
            redirect.matched_prefix
        ),
        "https://f.default.ofn.io/new/page?a=1"
    );
    let api = plan
        .routes
        .find("f.default.ofn.io", "/api", &get())
        .unwrap()
        .rule
        .clone();
    let rw = api.rewrite().unwrap();
    assert_eq!(rw.hostname.as_deref(), Some("internal"));
    assert_eq!(rw.path, Some(PathRewrite::Full("/v2".into())));
    let edits = api.request_headers().unwrap();
    assert_eq!(edits.set, vec![("x-a".to_string(), "a".to_string())]);
    assert_eq!(edits.remove, vec!["x-c".to_string()]);
    assert_eq!(api.response_headers().unwrap().set[0].0, "x-r");
    assert_eq!(&*api.mirrors()[0].service, "shadow");
    assert_eq!(api.total_weight(), 100);
    assert_eq!(&*api.pick_backend(0).unwrap().service, "v1");
    assert_eq!(&*api.pick_backend(95).unwrap().namespace, "other");
    assert_eq!(
        api.timeouts.request,
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(
        api.timeouts.backend_request,
        Some(std::time::Duration::from_secs(2))
    );
}

#[test]
fn v1beta1_functions_convert_like_openfunction() {
    let f = "apiVersion: core.openfunction.io/v1beta1\nkind: Function\nmetadata:\n  name: old\nspec:\n  port: 9000\n  serving:\n    runtime: knative\n  route:\n    hostnames: [\"old.example.com\"]\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /v1}}]\n";
    let asyncf = "apiVersion: core.openfunction.io/v1beta1\nkind: Function\nmetadata:\n  name: worker\nspec:\n  serving:\n    runtime: async\n    inputs: [{name: in, component: kafka}]\n    bindings:\n      kafka: {type: bindings.kafka, version: v1, metadata: []}\n";
    let snapshot = snapshot_from_texts([("a.yaml", f), ("b.yaml", asyncf)]);
    let plan = compile(&snapshot, &CompileSettings::default(), None);
    assert_eq!(
        route(&plan, "old.example.com", "/v1/x", get()),
        "default/old#0"
    );
    let rule = plan
        .routes
        .find("old.example.com", "/v1", &get())
        .unwrap()
        .rule
        .clone();
    assert_eq!(rule.backends[0].target.port, Some(9000));
    // The async function has no HTTP trigger, and its input became a Dapr trigger.
    assert_eq!(plan.functions.len(), 1);
    let worker = snapshot.objects.values().find_map(|e| match &*e.object {
        fngate::api::ParsedObject::Function(f) if f.metadata.name == "worker" => Some(f.clone()),
        _ => None,
    });
    let triggers = worker
        .unwrap()
        .spec
        .serving
        .clone()
        .unwrap()
        .triggers
        .unwrap();
    assert!(triggers.http.is_none());
    let dapr = triggers.dapr.unwrap();
    assert_eq!(
        (dapr[0].name.as_str(), dapr[0].kind.as_deref()),
        ("kafka", Some("bindings.kafka"))
    );
}

#[test]
fn every_problem_is_reported_with_file_object_and_field_and_good_objects_still_serve() {
    let bad = function(
        "bad",
        "        route:\n          rules:\n          - matches: [{path: {type: Prefix, value: /x}}]\n          - matches: [{headers: [{name: X, type: RegularExpression, value: \"(\"}]}]\n          - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]\n            timeouts: {request: 5 seconds}\n",
    );
    let good = function("good", "        port: 8080\n");
    let plan = plan_of(&[
        ("bad.yaml", &bad),
        ("good.yaml", &good),
        ("broken.yaml", "kind: [unclosed"),
    ]);
    let errors: Vec<String> = plan
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect();
    let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(has("bad.yaml: Function default/bad: field spec.serving.triggers.http.route.rules[0].matches[0].path.type"), "{errors:#?}");
    assert!(
        has("rules[1].matches[0].headers[0].value: invalid regular expression"),
        "{errors:#?}"
    );
    assert!(
        has("rules[2].filters[0].requestRedirect.statusCode"),
        "{errors:#?}"
    );
    assert!(has("rules[2].timeouts.request"), "{errors:#?}");
    assert!(has("broken.yaml") && has("invalid YAML"), "{errors:#?}");
    assert_eq!(
        route(&plan, "good.default.ofn.io", "/", get()),
        "default/good#0"
    );
    assert_eq!(route(&plan, "bad.default.ofn.io", "/", get()), "404");
}

#[test]
fn an_object_that_turns_invalid_keeps_its_last_good_version_serving() {
    let v1 = function(
        "f",
        "        route:\n          rules:\n          - matches: [{path: {value: /v1}}]\n",
    );
    let first = compile(
        &snapshot_from_texts([("f.yaml", v1.as_str())]),
        &CompileSettings::default(),
        None,
    );
    assert_eq!(
        route(&first, "f.default.ofn.io", "/v1", get()),
        "default/f#0"
    );
    let v2 = function(
        "f",
        "        route:\n          rules:\n          - matches: [{path: {value: no-slash}}]\n",
    );
    let second = compile(
        &snapshot_from_texts([("f.yaml", v2.as_str())]),
        &CompileSettings::default(),
        Some(&first),
    );
    assert_eq!(
        route(&second, "f.default.ofn.io", "/v1", get()),
        "default/f#0",
        "last good version still serves"
    );
    assert!(second.diagnostics.iter().any(|d| d.is_error()
        && d.field
            .as_deref()
            .is_some_and(|f| f.ends_with("path.value"))));
    assert!(second
        .diagnostics
        .iter()
        .any(|d| d.message.contains("last good version")));
}

#[test]
fn endpoints_come_from_ready_addresses_of_labelled_slices() {
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s1\n  namespace: default\n  labels: {kubernetes.io/service-name: hello}\nendpoints:\n- addresses: [10.0.0.1]\n  conditions: {ready: true}\n- addresses: [10.0.0.2]\n  conditions: {ready: false}\n- addresses: [10.0.0.3]\nports:\n- {name: http, port: 8080}\n- {name: metrics, port: 9090}\n";
    let plan = plan_of(&[("s.yaml", slice)]);
    let eps = plan.endpoints.get("default", "hello").unwrap();
    assert_eq!(
        eps.ready.len(),
        2,
        "unset `ready` counts as ready; false does not"
    );
    assert_eq!(eps.not_ready.len(), 1);
    let picks: Vec<String> = (0..4)
        .map(|_| eps.pick(0, Some(9090)).unwrap().to_string())
        .collect();
    assert!(
        picks.contains(&"10.0.0.1:9090".to_string())
            && picks.contains(&"10.0.0.3:9090".to_string()),
        "{picks:?}"
    );
    assert_eq!(
        eps.pick(0, Some(1234)).unwrap().port(),
        8080,
        "no match: the first port"
    );
}

/// Recompiling on top of the previous plan (reusing unchanged Functions, endpoints and
/// route buckets) routes every request exactly as compiling from scratch does, through a
/// long series of edits: hostnames moved between Functions and shared, wildcards, paths
/// changed, Functions added and deleted, Gateways changed.
#[test]
fn incremental_recompiles_route_exactly_as_compiling_from_scratch() {
    let hosts = [
        "a.example.com",
        "b.example.com",
        "*.example.com",
        "shared.example.org",
        "x.example.com",
    ];
    let paths = ["/", "/api", "/api/v1", "/default/fn-1", "/web"];
    // A small deterministic generator: the same edits on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut files: std::collections::BTreeMap<String, String> = Default::default();
    let settings = CompileSettings::default();
    let mut incremental: Option<Plan> = None;
    for step in 0..300 {
        let f = next(8);
        let name = format!("fn-{f}.yaml");
        match next(6) {
            0 => {
                files.remove(&name);
            }
            1 => {
                files.insert(
                    "gw.yaml".into(),
                    format!(
                        "apiVersion: networking.openfunction.io/v1alpha1\nkind: Gateway\nmetadata:\n  name: openfunction\n  namespace: openfunction\nspec:\n  domain: d{}.io\n  clusterDomain: cluster.local\n  hostTemplate: \"{{{{.Name}}}}.{{{{.Namespace}}}}.{{{{.Domain}}}}\"\n  pathTemplate: \"{{{{.Namespace}}}}/{{{{.Name}}}}\"\n  gatewayDef:\n    name: gw\n    namespace: openfunction\n  gatewaySpec:\n    listeners:\n      - name: http\n        protocol: HTTP\n        port: 80\n",
                        next(2)
                    ),
                );
            }
            _ => {
                let host_list: Vec<String> = (0..next(3))
                    .map(|_| format!("\"{}\"", hosts[next(hosts.len())]))
                    .collect();
                let mut body = String::from("        port: 8080\n        route:\n");
                if !host_list.is_empty() {
                    body.push_str(&format!(
                        "          hostnames: [{}]\n",
                        host_list.join(", ")
                    ));
                }
                if next(2) == 0 {
                    let p = paths[next(paths.len())];
                    let kind = ["PathPrefix", "Exact"][next(2)];
                    body.push_str(&format!(
                        "          rules:\n            - matches:\n                - path: {{type: {kind}, value: \"{p}\"}}\n"
                    ));
                }
                files.insert(name, function(&format!("fn-{f}"), &body));
            }
        }
        let texts: Vec<(&str, &str)> = files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let snapshot = snapshot_from_texts(texts);
        let fresh = compile(&snapshot, &settings, None);
        let next_plan = compile(&snapshot, &settings, incremental.as_ref());
        let mut probe_hosts: Vec<String> = hosts.iter().map(|h| h.replace('*', "w")).collect();
        for f in 0..8 {
            for d in ["ofn.io", "d0.io", "d1.io", "svc.cluster.local"] {
                probe_hosts.push(format!("fn-{f}.default.{d}"));
            }
        }
        for host in &probe_hosts {
            for path in paths.iter().chain(["/default/fn-3/x", "/nothing"].iter()) {
                assert_eq!(
                    route(&next_plan, host, path, get()),
                    route(&fresh, host, path, get()),
                    "step {step}: {host}{path}"
                );
            }
        }
        assert_eq!(next_plan.routes.len(), fresh.routes.len(), "step {step}");
        assert_eq!(next_plan.diagnostics, fresh.diagnostics, "step {step}");
        incremental = Some(next_plan);
    }
}

#[test]
fn the_release_limit_comes_from_the_annotation_else_the_knative_target() {
    let limit = |plan: &Plan| {
        plan.routes
            .find("f.default.ofn.io", "/", &get())
            .map(|m| m.rule.hold.release_concurrency)
    };
    let knative = "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: f\n  namespace: default\nANNOTATIONSspec:\n  serving:\n    scaleOptions:\n      knative:\n        autoscaling.knative.dev/target: \"TARGET\"\n    triggers:\n      http:\n        port: 8080\n";
    let text = |annotation: &str, target: &str| {
        knative
            .replace("ANNOTATIONS", annotation)
            .replace("TARGET", target)
    };
    let plan = plan_of(&[("f.yaml", &text("", "10"))]);
    assert_eq!(limit(&plan), Some(Some(10)));
    let plan = plan_of(&[("f.yaml", &text("", "0.5"))]);
    assert_eq!(
        limit(&plan),
        Some(Some(1)),
        "a fractional target still lets one through"
    );
    let ours = "  annotations:\n    fngate.io/release-concurrency: \"3\"\n";
    let plan = plan_of(&[("f.yaml", &text(ours, "10"))]);
    assert_eq!(limit(&plan), Some(Some(3)));
    // Knative's malformed setting is a warning and no limit; ours is an error.
    let plan = plan_of(&[("f.yaml", &text("", "lots"))]);
    assert_eq!(limit(&plan), Some(None));
    assert!(plan
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Warning
            && d.field.as_deref()
                == Some("spec.serving.scaleOptions.knative[autoscaling.knative.dev/target]")));
    let bad = "  annotations:\n    fngate.io/release-concurrency: \"none\"\n";
    let plan = plan_of(&[("f.yaml", &text(bad, "10"))]);
    assert!(plan
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error
            && d.field.as_deref() == Some("metadata.annotations[fngate.io/release-concurrency]")));
}

#[test]
fn the_readiness_path_comes_from_the_annotation_else_the_function_containers_probe() {
    let text = |annotation: &str| {
        format!("apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: f\n  namespace: default\n{annotation}spec:\n  serving:\n    template:\n      containers:\n        - name: sidecar\n          readinessProbe: {{httpGet: {{path: /sidecar}}}}\n        - name: function\n          readinessProbe:\n            httpGet: {{path: /healthz, port: 8080}}\n    triggers:\n      http:\n        port: 8080\n")
    };
    let path = |plan: &Plan| {
        plan.routes
            .find("f.default.ofn.io", "/", &get())
            .and_then(|m| m.rule.hold.readiness_path.clone())
    };
    assert_eq!(
        path(&plan_of(&[("f.yaml", &text(""))])).as_deref(),
        Some("/healthz")
    );
    let ours = "  annotations:\n    fngate.io/readiness-path: /ready\n";
    assert_eq!(
        path(&plan_of(&[("f.yaml", &text(ours))])).as_deref(),
        Some("/ready")
    );
}

#[test]
fn the_upstream_protocol_comes_from_the_annotation_else_the_slice_port() {
    let function = |annotation: &str| {
        format!("apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: f\n  namespace: default\n{annotation}spec:\n  serving:\n    triggers:\n      http:\n        port: 8080\n")
    };
    let slice = |app_protocol: &str| {
        format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: f\n  namespace: default\n  labels: {{kubernetes.io/service-name: f}}\nendpoints: [{{addresses: [10.0.0.1]}}]\nports: [{{port: 8080{app_protocol}}}]\n")
    };
    // Whether a request for f goes out over h2c.
    let h2c = |plan: &Plan| {
        let rule = plan
            .routes
            .find("f.default.ofn.io", "/", &get())
            .unwrap()
            .rule;
        let target = &rule.backends[0].target;
        let upstream = plan
            .endpoints
            .for_target(target)
            .unwrap()
            .pick_upstream(0, target.port)
            .unwrap();
        rule.upstream_h2c.unwrap_or(upstream.h2c)
    };
    let annotated =
        |value: &str| format!("  annotations:\n    fngate.io/upstream-protocol: {value}\n");
    let plan = plan_of(&[("f.yaml", &function("")), ("s.yaml", &slice(""))]);
    assert!(!h2c(&plan), "HTTP/1.1 unless something says h2c");
    let h2c_port = ", appProtocol: kubernetes.io/h2c";
    let plan = plan_of(&[("f.yaml", &function("")), ("s.yaml", &slice(h2c_port))]);
    assert!(h2c(&plan), "the slice port's appProtocol");
    let plan = plan_of(&[
        ("f.yaml", &function(&annotated("h2c"))),
        ("s.yaml", &slice("")),
    ]);
    assert!(h2c(&plan), "the annotation");
    let plan = plan_of(&[
        ("f.yaml", &function(&annotated("http1"))),
        ("s.yaml", &slice(h2c_port)),
    ]);
    assert!(!h2c(&plan), "http1 overrides the slice");
    let plan = plan_of(&[
        ("f.yaml", &function(&annotated("h3"))),
        ("s.yaml", &slice("")),
    ]);
    assert!(plan
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error
            && d.field.as_deref() == Some("metadata.annotations[fngate.io/upstream-protocol]")
            && d.message.contains("\"h3\"")));
}
