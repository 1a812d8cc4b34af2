//! HTTPRoute filters and timeouts -> validated rule actions.

use super::field::Field;
use crate::api::parse_duration;
use crate::api::{
    BackendRef, Diagnostic, Filter, HeaderModifier, PathModifier, RuleTimeouts as ApiTimeouts,
};
use crate::routing::{
    BackendTarget, HeaderEdits, PathCondition, PathRewrite, Redirect, Rewrite, RuleTimeouts,
};
use std::sync::Arc;

#[derive(Default)]
pub(super) struct RuleActions {
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<BackendTarget>,
}

pub(super) fn compile_filters(
    filters: &[Filter],
    paths: &[PathCondition],
    namespace: &str,
    filters_field: &Field,
    diags: &mut Vec<Diagnostic>,
) -> RuleActions {
    let mut actions = RuleActions::default();
    for (i, f) in filters.iter().enumerate() {
        let field = filters_field.index(i);
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                let Some(m) = &f.request_header_modifier else {
                    diags.push(missing(&field, "requestHeaderModifier"));
                    continue;
                };
                actions.request_headers = Some(header_edits(m, &field.key("requestHeaderModifier"), diags));
            }
            "ResponseHeaderModifier" => {
                let Some(m) = &f.response_header_modifier else {
                    diags.push(missing(&field, "responseHeaderModifier"));
                    continue;
                };
                actions.response_headers = Some(header_edits(m, &field.key("responseHeaderModifier"), diags));
            }
            "RequestRedirect" => {
                let Some(r) = &f.request_redirect else {
                    diags.push(missing(&field, "requestRedirect"));
                    continue;
                };
                let field = field.key("requestRedirect");
                let scheme = r.scheme.clone();
                if let Some(s) = &scheme {
                    if s != "http" && s != "https" {
                        diags.push(Diagnostic::error(format!("scheme {s:?} must be http or https")).at_field(format!("{field}.scheme")));
                    }
                }
                let status = r.status_code.unwrap_or(302);
                if ![301, 302, 303, 307, 308].contains(&status) {
                    diags.push(
                        Diagnostic::error(format!("statusCode {status} must be one of 301, 302, 303, 307, 308"))
                            .at_field(format!("{field}.statusCode")),
                    );
                }
                let path = r.path.as_ref().and_then(|p| path_rewrite(p, paths, &field.key("path"), diags));
                actions.redirect = Some(Redirect {
                    scheme,
                    hostname: r.hostname.clone().filter(|h| !h.is_empty()),
                    port: r.port,
                    path,
                    status,
                });
            }
            "URLRewrite" => {
                let Some(r) = &f.url_rewrite else {
                    diags.push(missing(&field, "urlRewrite"));
                    continue;
                };
                let path = r.path.as_ref().and_then(|p| path_rewrite(p, paths, &field.key("urlRewrite.path"), diags));
                actions.rewrite = Some(Rewrite { hostname: r.hostname.clone().filter(|h| !h.is_empty()), path });
            }
            "RequestMirror" => {
                let Some(m) = &f.request_mirror else {
                    diags.push(missing(&field, "requestMirror"));
                    continue;
                };
                if let Some(t) = backend_target(&m.backend_ref, namespace, &field.key("requestMirror.backendRef"), diags) {
                    actions.mirrors.push(t);
                }
            }
            other => diags.push(
                Diagnostic::error(format!(
                    "filter type {other:?} is not supported; expected RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite or RequestMirror"
                ))
                .at_field(format!("{field}.type")),
            ),
        }
    }
    if actions.redirect.is_some() && actions.rewrite.is_some() {
        diags.push(
            Diagnostic::error("RequestRedirect and URLRewrite cannot be used in the same rule")
                .at_field(filters_field.to_string()),
        );
    }
    actions
}

fn missing(field: &Field, key: &str) -> Diagnostic {
    Diagnostic::error(format!("{key} is required for this filter type"))
        .at_field(format!("{field}.{key}"))
}

fn header_edits(m: &HeaderModifier, field: &Field, diags: &mut Vec<Diagnostic>) -> HeaderEdits {
    let mut check = |name: &str, value: Option<&str>, f: String| {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            diags.push(
                Diagnostic::error(format!("{name:?} is not a valid header name"))
                    .at_field(f.clone()),
            );
        }
        if let Some(v) = value {
            if http::HeaderValue::from_str(v).is_err() {
                diags.push(
                    Diagnostic::error(format!("{v:?} is not a valid header value")).at_field(f),
                );
            }
        }
    };
    for (i, h) in m.set.iter().enumerate() {
        check(&h.name, Some(&h.value), format!("{field}.set[{i}]"));
    }
    for (i, h) in m.add.iter().enumerate() {
        check(&h.name, Some(&h.value), format!("{field}.add[{i}]"));
    }
    for (i, h) in m.remove.iter().enumerate() {
        check(h, None, format!("{field}.remove[{i}]"));
    }
    HeaderEdits {
        set: m
            .set
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn path_rewrite(
    p: &PathModifier,
    paths: &[PathCondition],
    field: &Field,
    diags: &mut Vec<Diagnostic>,
) -> Option<PathRewrite> {
    match p.kind.as_str() {
        "ReplaceFullPath" => match &p.replace_full_path {
            Some(v) if v.starts_with('/') => Some(PathRewrite::Full(v.clone())),
            _ => {
                diags.push(
                    Diagnostic::error("replaceFullPath must be set and start with '/'")
                        .at_field(format!("{field}.replaceFullPath")),
                );
                None
            }
        },
        "ReplacePrefixMatch" => {
            if paths.iter().any(|c| !matches!(c, PathCondition::Prefix(_))) {
                diags.push(
                    Diagnostic::error(
                        "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                    )
                    .at_field(format!("{field}.type")),
                );
                return None;
            }
            match &p.replace_prefix_match {
                Some(v) if v.starts_with('/') => Some(PathRewrite::Prefix(v.clone())),
                _ => {
                    diags.push(
                        Diagnostic::error("replacePrefixMatch must be set and start with '/'")
                            .at_field(format!("{field}.replacePrefixMatch")),
                    );
                    None
                }
            }
        }
        other => {
            diags.push(
                Diagnostic::error(format!(
                    "path modifier type {other:?}; expected ReplaceFullPath or ReplacePrefixMatch"
                ))
                .at_field(format!("{field}.type")),
            );
            None
        }
    }
}

pub(super) fn backend_target(
    b: &BackendRef,
    namespace: &str,
    field: &Field,
    diags: &mut Vec<Diagnostic>,
) -> Option<BackendTarget> {
    let kind_ok = b.kind.as_deref().is_none_or(|k| k == "Service")
        && b.group.as_deref().is_none_or(str::is_empty);
    if !kind_ok {
        diags.push(
            Diagnostic::error("only core Services can be backends (kind Service, group \"\")")
                .at_field(format!("{field}.kind")),
        );
        return None;
    }
    if b.name.is_empty() {
        diags.push(Diagnostic::error("backend name is required").at_field(format!("{field}.name")));
        return None;
    }
    Some(BackendTarget {
        namespace: Arc::from(
            b.namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace),
        ),
        service: Arc::from(b.name.as_str()),
        port: b.port,
    })
}

pub(super) fn compile_timeouts(
    t: Option<&ApiTimeouts>,
    field: &Field,
    diags: &mut Vec<Diagnostic>,
) -> RuleTimeouts {
    let Some(t) = t else {
        return RuleTimeouts::default();
    };
    let mut one = |v: &Option<String>, key: &str| match v.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            diags.push(Diagnostic::error(e).at_field(format!("{field}.{key}")));
            None
        }
    };
    let request = one(&t.request, "request");
    let backend_request = one(&t.backend_request, "backendRequest");
    if let (Some(r), Some(b)) = (request, backend_request) {
        if b > r {
            diags.push(
                Diagnostic::error("backendRequest must not be longer than request")
                    .at_field(format!("{field}.backendRequest")),
            );
        }
    }
    RuleTimeouts {
        request,
        backend_request,
    }
}
