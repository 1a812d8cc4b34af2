//! A Function's HTTP trigger -> route entries, the way OpenFunction v1.1.0 builds its
//! HTTPRoute: default hostnames from the Gateway templates plus the in-cluster name,
//! a default rule, and the Function's own Service as backend unless backendRefs are given.

use super::field::Field;
use super::filters::{backend_target, compile_filters, compile_timeouts};
use super::gateway::GatewayDefaults;
use crate::api::{
    Diagnostic, Function, HeaderMatch, HttpTrigger, PathMatch, RouteMatch, RouteRule, RouteSpec,
};
use crate::routing::HoldPolicy;
use crate::routing::{
    FunctionRef, HeaderCondition, MatchConditions, PathCondition, PathRewrite, Rewrite, RouteEntry,
    Rule, RuleFilters, StringMatch, WeightedBackend,
};
use std::borrow::Cow;
use std::sync::Arc;

pub(super) struct CompiledRoutes {
    pub entries: Vec<RouteEntry>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Most matches test only the path; they all share this one value.
static NO_CONDITIONS: std::sync::LazyLock<Arc<MatchConditions>> =
    std::sync::LazyLock::new(|| Arc::new(MatchConditions::default()));

const ROUTE_FIELD: &str = "spec.serving.triggers.http.route";
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Function annotation: how long its requests may wait for a ready endpoint.
pub const HOLD_TIMEOUT_ANNOTATION: &str = "fngate.io/hold-timeout";
pub const RELEASE_CONCURRENCY_ANNOTATION: &str = "fngate.io/release-concurrency";
pub const READINESS_PATH_ANNOTATION: &str = "fngate.io/readiness-path";
/// Function annotation: `h2c` sends its requests over HTTP/2 without TLS (gRPC
/// functions), `http1` over HTTP/1.1; unset, the EndpointSlice port's `appProtocol` says.
pub const UPSTREAM_PROTOCOL_ANNOTATION: &str = "fngate.io/upstream-protocol";

fn upstream_h2c(f: &Function, diags: &mut Vec<Diagnostic>) -> Option<bool> {
    match f
        .metadata
        .annotations
        .get(UPSTREAM_PROTOCOL_ANNOTATION)
        .map(String::as_str)
    {
        None => None,
        Some("http1") => Some(false),
        Some("h2c") => Some(true),
        Some(other) => {
            diags.push(
                Diagnostic::error(format!(
                    "{other:?} is not an upstream protocol; use \"h2c\" or \"http1\""
                ))
                .at_field(format!(
                    "metadata.annotations[{UPSTREAM_PROTOCOL_ANNOTATION}]"
                )),
            );
            None
        }
    }
}

/// The path the activator's probe GETs: fngate's annotation, else the HTTP readiness
/// probe of the function's container (the one named `function`, else the first).
fn readiness_path(f: &Function) -> Option<String> {
    if let Some(p) = f.metadata.annotations.get(READINESS_PATH_ANNOTATION) {
        return Some(p.clone()).filter(|p| p.starts_with('/'));
    }
    f.spec.serving.as_ref()?.readiness_path.clone()
}
const KNATIVE_TARGET: &str = "autoscaling.knative.dev/target";

/// Requests one endpoint takes at a time when released after a hold: fngate's annotation,
/// else the Knative autoscaling target OpenFunction passes in `scaleOptions.knative`.
fn release_concurrency(f: &Function, diags: &mut Vec<Diagnostic>) -> Option<u32> {
    let knative = f
        .spec
        .serving
        .as_ref()
        .and_then(|s| s.scale_options.as_ref())
        .and_then(|o| o.get("knative"))
        .and_then(|k| k.get(KNATIVE_TARGET));
    let (value, field, ours) = match f.metadata.annotations.get(RELEASE_CONCURRENCY_ANNOTATION) {
        Some(v) => (
            v.clone(),
            format!("metadata.annotations[{RELEASE_CONCURRENCY_ANNOTATION}]"),
            true,
        ),
        None => {
            let v = knative?;
            let text = match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            (
                text,
                format!("spec.serving.scaleOptions.knative[{KNATIVE_TARGET}]"),
                false,
            )
        }
    };
    // Knative's target may be fractional ("0.7" of a request): at least one at a time.
    match value.trim().parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Some((n.ceil() as u64).min(u32::MAX as u64) as u32),
        _ => {
            let message = format!("{value:?} is not a positive number of requests");
            // Knative's own setting is Knative's to validate: ignored, not fatal.
            diags.push(if ours {
                Diagnostic::error(message).at_field(field)
            } else {
                Diagnostic::warning(format!("{message}; no release limit")).at_field(field)
            });
            None
        }
    }
}

pub(super) fn compile_function(f: &Function, gw: &GatewayDefaults) -> CompiledRoutes {
    let mut diags = Vec::new();
    let mut entries = Vec::new();
    let route_field = Field::root(ROUTE_FIELD);
    let name = f.metadata.name.as_str();
    let namespace = f.metadata.namespace_or_default();
    let hold_timeout = match f.metadata.annotations.get(HOLD_TIMEOUT_ANNOTATION) {
        None => None,
        Some(v) => match crate::api::parse_duration(v) {
            Ok(d) => d,
            Err(e) => {
                diags.push(
                    Diagnostic::error(e)
                        .at_field(format!("metadata.annotations[{HOLD_TIMEOUT_ANNOTATION}]")),
                );
                None
            }
        },
    };
    let hold = Arc::new(HoldPolicy {
        timeout: hold_timeout,
        release_concurrency: release_concurrency(f, &mut diags),
        readiness_path: readiness_path(f),
    });
    let upstream_h2c = upstream_h2c(f, &mut diags);
    let serving = Arc::new(crate::routing::ServingSlot::default());
    let default_trigger = HttpTrigger::default();
    let trigger = f.http_trigger().unwrap_or(&default_trigger);
    let default_route = RouteSpec::default();
    let route = trigger.route.as_ref().unwrap_or(&default_route);
    let port = match trigger.port {
        None => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                diags.push(
                    Diagnostic::error(format!("port {p} must be from 1 to 65535"))
                        .at_field("spec.serving.triggers.http.port"),
                );
                None
            }
        },
    };

    // Hostnames.
    let user_hostnames: &[String] = route.hostnames.as_deref().unwrap_or(&[]);
    for (i, h) in user_hostnames.iter().enumerate() {
        if let Err(e) = validate_hostname(h) {
            diags.push(Diagnostic::error(e).at_field(format!("{ROUTE_FIELD}.hostnames[{i}]")));
        }
    }
    let mut hostnames: Vec<String> = if user_hostnames.is_empty() {
        gw.host_template
            .iter()
            .map(|t| gw.render(t, name, namespace))
            .collect()
    } else {
        user_hostnames.to_vec()
    };
    if let Some(cluster_domain) = &gw.cluster_domain {
        hostnames.push(format!("{name}.{namespace}.svc.{cluster_domain}"));
    }
    let hostnames: Vec<String> = hostnames
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let sections: Vec<String> = route
        .parent_refs
        .iter()
        .flatten()
        .chain(route.gateway_ref.iter())
        .filter_map(|p| p.section_name.clone())
        .collect();
    let Some(hostnames) = gw.attach(&hostnames, &sections).map(Arc::<[String]>::from) else {
        diags.push(
            Diagnostic::warning("no hostname of this route matches a listener hostname of its Gateway; route not attached")
                .at_field(format!("{ROUTE_FIELD}.hostnames")),
        );
        return CompiledRoutes {
            entries,
            diagnostics: diags,
        };
    };

    // Rules.
    let rules: Cow<[RouteRule]> = match &route.rules {
        Some(rules) if !rules.is_empty() => Cow::Borrowed(rules.as_slice()),
        _ if !user_hostnames.is_empty() => {
            // Path-based routing: /<pathTemplate>, seen by the function as `/`.
            let path = format!(
                "/{}",
                gw.render(&gw.path_template, name, namespace)
                    .trim_start_matches('/')
            );
            Cow::Owned(vec![RouteRule {
                matches: Some(vec![RouteMatch {
                    path: Some(PathMatch {
                        kind: Some("PathPrefix".into()),
                        value: Some(path),
                    }),
                    ..RouteMatch::default()
                }]),
                ..RouteRule::default()
            }])
        }
        _ => Cow::Owned(vec![RouteRule::default()]),
    };
    let path_based_rewrite =
        route.rules.as_ref().is_none_or(Vec::is_empty) && !user_hostnames.is_empty();

    let created: Option<Arc<str>> = f.metadata.creation_timestamp.as_deref().map(Arc::from);
    let ns_arc: Arc<str> = Arc::from(namespace);
    let function_ref = FunctionRef {
        namespace: ns_arc.clone(),
        name: Arc::from(name),
    };
    let own_service: Arc<[WeightedBackend]> = Arc::new([WeightedBackend {
        target: crate::routing::BackendTarget {
            namespace: ns_arc.clone(),
            service: Arc::from(f.service_name()),
            port,
        },
        weight: 1,
    }]);
    for (ri, rule) in rules.iter().enumerate() {
        let rules_field = route_field.key("rules");
        let field = rules_field.index(ri);
        let errors_before = diags.iter().filter(|d| d.is_error()).count();
        let matches: Cow<[RouteMatch]> = match &rule.matches {
            Some(m) if !m.is_empty() => Cow::Borrowed(m.as_slice()),
            _ => Cow::Owned(vec![RouteMatch::default()]),
        };
        let mut compiled_matches = Vec::new();
        for (mi, m) in matches.iter().enumerate() {
            let matches_field = field.key("matches");
            let mfield = matches_field.index(mi);
            if let Some(c) = compile_match(m, &mfield, &mut diags) {
                compiled_matches.push((mi, c));
            }
        }
        let paths: Vec<PathCondition> = compiled_matches
            .iter()
            .map(|(_, (p, _))| p.clone())
            .collect();
        let mut actions = compile_filters(
            rule.filters.as_deref().unwrap_or(&[]),
            &paths,
            namespace,
            &field.key("filters"),
            &mut diags,
        );
        if path_based_rewrite && actions.rewrite.is_none() && actions.redirect.is_none() {
            actions.rewrite = Some(Rewrite {
                hostname: None,
                path: Some(PathRewrite::Prefix("/".into())),
            });
        }
        let timeouts = compile_timeouts(rule.timeouts.as_ref(), &field.key("timeouts"), &mut diags);
        let backends: Arc<[WeightedBackend]> = match &rule.backend_refs {
            Some(refs) if !refs.is_empty() => refs
                .iter()
                .enumerate()
                .filter_map(|(bi, b)| {
                    let refs_field = field.key("backendRefs");
                    let bfield = refs_field.index(bi);
                    let weight = b.weight.unwrap_or(1);
                    if !(0..=1_000_000).contains(&weight) {
                        diags.push(
                            Diagnostic::error(format!("weight {weight} must be from 0 to 1000000"))
                                .at_field(format!("{bfield}.weight")),
                        );
                        return None;
                    }
                    let target = backend_target(b, namespace, &bfield, &mut diags)?;
                    Some(WeightedBackend {
                        target,
                        weight: weight as u32,
                    })
                })
                .collect(),
            _ => own_service.clone(),
        };
        if diags.iter().filter(|d| d.is_error()).count() > errors_before {
            continue;
        }
        let rule_arc = Arc::new(Rule {
            function: function_ref.clone(),
            rule_index: ri,
            rule_name: rule.name.as_deref().map(Box::from),
            filters: {
                let filters = RuleFilters {
                    request_headers: actions.request_headers,
                    response_headers: actions.response_headers,
                    redirect: actions.redirect,
                    rewrite: actions.rewrite,
                    mirrors: actions.mirrors,
                };
                (!filters.is_empty()).then(|| Box::new(filters))
            },
            backends,
            timeouts,
            hold: hold.clone(),
            upstream_h2c,
            next_pick: Default::default(),
            serving: serving.clone(),
        });
        for (mi, (path, conditions)) in compiled_matches {
            entries.push(RouteEntry {
                hostnames: hostnames.clone(),
                path,
                conditions,
                rule: rule_arc.clone(),
                created: created.clone(),
                match_index: mi,
            });
        }
    }
    CompiledRoutes {
        entries,
        diagnostics: diags,
    }
}

fn compile_match(
    m: &RouteMatch,
    field: &Field,
    diags: &mut Vec<Diagnostic>,
) -> Option<(PathCondition, Arc<MatchConditions>)> {
    let before = diags.len();
    let path = match &m.path {
        None => PathCondition::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" | "PathPrefix" if !value.starts_with('/') => {
                    diags.push(
                        Diagnostic::error(format!("path {value:?} must start with '/'"))
                            .at_field(format!("{field}.path.value")),
                    );
                    PathCondition::Exact(value)
                }
                "Exact" => PathCondition::Exact(value),
                "PathPrefix" => {
                    let trimmed = value.trim_end_matches('/');
                    PathCondition::Prefix(if trimmed.is_empty() {
                        "/".into()
                    } else {
                        trimmed.to_owned()
                    })
                }
                "RegularExpression" => {
                    if let Err(e) = regex::Regex::new(&value) {
                        diags.push(
                            Diagnostic::error(format!("invalid regular expression: {e}"))
                                .at_field(format!("{field}.path.value")),
                        );
                    }
                    PathCondition::Regex(value)
                }
                other => {
                    diags.push(
                        Diagnostic::error(format!(
                            "path type {other:?}; expected Exact, PathPrefix or RegularExpression"
                        ))
                        .at_field(format!("{field}.path.type")),
                    );
                    PathCondition::Prefix("/".into())
                }
            }
        }
    };
    let method = match &m.method {
        None => None,
        Some(method) if METHODS.contains(&method.as_str()) => Some(method.clone()),
        Some(method) => {
            diags.push(
                Diagnostic::error(format!(
                    "method {method:?} is not one of {}",
                    METHODS.join(", ")
                ))
                .at_field(format!("{field}.method")),
            );
            None
        }
    };
    let headers = conditions(
        m.headers.as_deref().unwrap_or(&[]),
        true,
        &field.key("headers"),
        diags,
    );
    let query = conditions(
        m.query_params.as_deref().unwrap_or(&[]),
        false,
        &field.key("queryParams"),
        diags,
    );
    let path_regex = match &path {
        PathCondition::Regex(re) => regex::Regex::new(&format!("^(?:{re})$")).ok(),
        _ => None,
    };
    if diags.len() != before {
        return None;
    }
    let plain = method.is_none() && headers.is_empty() && query.is_empty() && path_regex.is_none();
    let conditions = if plain {
        NO_CONDITIONS.clone()
    } else {
        Arc::new(MatchConditions {
            method,
            headers,
            query,
            path_regex,
        })
    };
    Some((path, conditions))
}

/// Header or query conditions. Gateway API: of entries with equal names only the first
/// counts (header names compare case-insensitively, query names exactly).
fn conditions(
    list: &[HeaderMatch],
    headers: bool,
    field: &Field,
    diags: &mut Vec<Diagnostic>,
) -> Vec<HeaderCondition> {
    let mut out: Vec<HeaderCondition> = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let name = if headers {
            h.name.to_ascii_lowercase()
        } else {
            h.name.clone()
        };
        if name.is_empty() {
            diags
                .push(Diagnostic::error("name is required").at_field(format!("{field}[{i}].name")));
            continue;
        }
        if out.iter().any(|c| c.name == name) {
            continue;
        }
        let value = match h.kind.as_deref().unwrap_or("Exact") {
            "Exact" => StringMatch::Exact(h.value.clone()),
            "RegularExpression" => match regex::Regex::new(&format!("^(?:{})$", h.value)) {
                Ok(re) => StringMatch::Regex(re),
                Err(e) => {
                    diags.push(
                        Diagnostic::error(format!("invalid regular expression: {e}"))
                            .at_field(format!("{field}[{i}].value")),
                    );
                    continue;
                }
            },
            other => {
                diags.push(
                    Diagnostic::error(format!(
                        "match type {other:?}; expected Exact or RegularExpression"
                    ))
                    .at_field(format!("{field}[{i}].type")),
                );
                continue;
            }
        };
        out.push(HeaderCondition { name, value });
    }
    out
}

fn validate_hostname(h: &str) -> Result<(), String> {
    let body = h.strip_prefix("*.").unwrap_or(h);
    let ok = !body.is_empty()
        && h.len() <= 253
        && !h.contains(':')
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a valid hostname (DNS name, optionally prefixed by '*.'; no IP, no port)"
        ))
    }
}
