//! OpenFunction Gateway defaults: host and path templates, and the listener hostnames a
//! route's hostnames are intersected with (Gateway API attachment rules).

use super::{CompileSettings, Snapshot};
use crate::api::{Function, Gateway, ObjectKey, ObjectKind, ParsedObject};
use std::sync::Arc;

pub const DEFAULT_GATEWAY: &str = "openfunction/openfunction";

/// The values a Function's route is defaulted from.
#[derive(Clone, Debug)]
pub struct GatewayDefaults {
    pub domain: String,
    /// `None` (set to "" on the Gateway): no `<name>.<namespace>.svc.<domain>` hostname.
    pub cluster_domain: Option<String>,
    /// `None` (set to "" on the Gateway): no default hostname; the route serves any host.
    pub host_template: Option<String>,
    pub path_template: String,
    /// (listener name, hostname); no listeners, or one without hostname, means any host.
    pub listeners: Vec<(String, Option<String>)>,
}

impl Default for GatewayDefaults {
    fn default() -> Self {
        GatewayDefaults {
            domain: "ofn.io".into(),
            cluster_domain: Some("cluster.local".into()),
            host_template: Some("{{.Name}}.{{.Namespace}}.{{.Domain}}".into()),
            path_template: "{{.Namespace}}/{{.Name}}".into(),
            listeners: Vec::new(),
        }
    }
}

impl GatewayDefaults {
    fn from_gateway(gw: &Gateway) -> Self {
        let d = GatewayDefaults::default();
        let s = &gw.spec;
        let non_empty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        // Unset means OpenFunction's default; an explicit "" turns the default off.
        let optional = |v: &Option<String>, default: Option<String>| match v {
            None => default,
            Some(v) if v.is_empty() => None,
            Some(v) => Some(v.clone()),
        };
        GatewayDefaults {
            domain: non_empty(&s.domain).unwrap_or(d.domain),
            cluster_domain: optional(&s.cluster_domain, d.cluster_domain),
            host_template: optional(&s.host_template, d.host_template),
            path_template: non_empty(&s.path_template).unwrap_or(d.path_template),
            listeners: gw
                .listeners()
                .iter()
                .map(|l| {
                    (
                        l.name.clone(),
                        l.hostname
                            .clone()
                            .filter(|h| !h.is_empty())
                            .map(|h| h.to_ascii_lowercase()),
                    )
                })
                .collect(),
        }
    }

    /// Renders `{{.Name}}`, `{{.Namespace}}` and `{{.Domain}}` (Go template syntax,
    /// spaces inside the braces allowed).
    pub fn render(&self, template: &str, name: &str, namespace: &str) -> String {
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find("}}") else {
                out.push_str(&rest[start..]);
                return out;
            };
            let field = rest[start + 2..start + end].trim();
            match field {
                ".Name" => out.push_str(name),
                ".Namespace" => out.push_str(namespace),
                ".Domain" => out.push_str(&self.domain),
                _ => out.push_str(&rest[start..start + end + 2]),
            }
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        out
    }

    /// Hostnames a route may serve on this gateway, given the listeners it names
    /// (`sectionName`s; empty = all). `None` = the route does not attach.
    pub fn attach(&self, route_hostnames: &[String], sections: &[String]) -> Option<Vec<String>> {
        let chosen: Vec<&Option<String>> = self
            .listeners
            .iter()
            .filter(|(name, _)| sections.is_empty() || sections.contains(name))
            .map(|(_, h)| h)
            .collect();
        if chosen.is_empty() && !sections.is_empty() {
            return None;
        }
        if chosen.is_empty() || chosen.iter().any(|h| h.is_none()) {
            return Some(route_hostnames.to_vec());
        }
        let listeners: Vec<&str> = chosen.iter().filter_map(|h| h.as_deref()).collect();
        if route_hostnames.is_empty() {
            return Some(listeners.iter().map(|s| s.to_string()).collect());
        }
        let mut out: Vec<String> = Vec::new();
        for r in route_hostnames {
            for l in &listeners {
                if let Some(h) = intersect(r, l) {
                    if !out.contains(&h) {
                        out.push(h);
                    }
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Gateway API hostname intersection of a route hostname and a listener hostname.
fn intersect(route: &str, listener: &str) -> Option<String> {
    let matches_wildcard = |host: &str, wildcard: &str| {
        let suffix = &wildcard[1..]; // ".example.com"
        host.len() > suffix.len() && host.ends_with(suffix)
    };
    match (route.starts_with("*."), listener.starts_with("*.")) {
        (false, false) => (route == listener).then(|| route.to_owned()),
        (false, true) => matches_wildcard(route, listener).then(|| route.to_owned()),
        (true, false) => matches_wildcard(listener, route).then(|| listener.to_owned()),
        (true, true) => {
            if route == listener || matches_wildcard(route, listener) {
                Some(route.to_owned())
            } else if matches_wildcard(listener, route) {
                Some(listener.to_owned())
            } else {
                None
            }
        }
    }
}

pub(super) struct GatewayIndex {
    default: Arc<GatewayDefaults>,
    named: std::collections::HashMap<(String, String), Arc<GatewayDefaults>>,
}

impl GatewayIndex {
    pub(super) fn new(snapshot: &Snapshot, settings: &CompileSettings) -> Self {
        let mut named = std::collections::HashMap::new();
        let start = ObjectKey::new(ObjectKind::Gateway, "", "");
        for (key, entry) in snapshot.objects.range(start..) {
            if key.kind != ObjectKind::Gateway {
                break;
            }
            if let ParsedObject::Gateway(gw) = &*entry.object {
                named.insert(
                    (key.namespace.clone(), key.name.clone()),
                    Arc::new(GatewayDefaults::from_gateway(gw)),
                );
            }
        }
        let (ns, name) = settings
            .gateway
            .split_once('/')
            .unwrap_or(("openfunction", settings.gateway.as_str()));
        let default = named
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_else(|| Arc::new(GatewayDefaults::default()));
        GatewayIndex { default, named }
    }

    /// The Gateway named by the Function's `route.gatewayRef`, else the configured one,
    /// else OpenFunction's defaults.
    pub(super) fn for_function(&self, f: &Function) -> Arc<GatewayDefaults> {
        let route = f.http_trigger().and_then(|t| t.route.as_ref());
        let gw_ref = route.and_then(|r| r.gateway_ref.as_ref()).or_else(|| {
            route
                .and_then(|r| r.parent_refs.as_ref())
                .and_then(|p| p.first())
        });
        if let Some(r) = gw_ref {
            let ns = r
                .namespace
                .clone()
                .unwrap_or_else(|| f.metadata.namespace_or_default().to_owned());
            if let Some(gw) = self.named.get(&(ns, r.name.clone())) {
                return gw.clone();
            }
        }
        self.default.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_go_style_fields() {
        let d = GatewayDefaults::default();
        assert_eq!(
            d.render(d.host_template.as_deref().unwrap(), "fn", "ns"),
            "fn.ns.ofn.io"
        );
        assert_eq!(d.render("{{ .Namespace }}/{{.Name}}", "fn", "ns"), "ns/fn");
        assert_eq!(d.render("{{.Unknown}}-x", "fn", "ns"), "{{.Unknown}}-x");
    }

    #[test]
    fn route_hostnames_are_intersected_with_listener_hostnames() {
        let d = GatewayDefaults {
            listeners: vec![
                ("l1".into(), Some("very.specific.com".into())),
                ("l2".into(), Some("*.wildcard.io".into())),
            ],
            ..GatewayDefaults::default()
        };
        assert_eq!(d.attach(&["non.matching.com".into()], &[]), None);
        assert_eq!(
            d.attach(&["foo.wildcard.io".into(), "wildcard.io".into()], &[]),
            Some(vec!["foo.wildcard.io".into()])
        );
        assert_eq!(
            d.attach(&["*.specific.com".into()], &[]),
            Some(vec!["very.specific.com".into()])
        );
        assert_eq!(
            d.attach(&["*.io".into()], &[]),
            Some(vec!["*.wildcard.io".into()])
        );
        assert_eq!(
            d.attach(&[], &[]),
            Some(vec!["very.specific.com".into(), "*.wildcard.io".into()])
        );
        assert_eq!(
            d.attach(&[], &["l2".into()]),
            Some(vec!["*.wildcard.io".into()])
        );
        assert_eq!(d.attach(&[], &["nope".into()]), None);
    }
}
