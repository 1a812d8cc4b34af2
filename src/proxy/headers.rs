//! Header handling between client and function: route edits, forwarding headers, and
//! hop-by-hop stripping (RFC 9110 §7.6.1) that leaves WebSocket upgrades intact.

use crate::routing::HeaderEdits;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

/// Names of hop-by-hop headers present, including those listed in `Connection`.
fn hop_by_hop_names(headers: &HeaderMap, keep_upgrade: bool) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for v in headers.get_all("connection") {
        if let Ok(v) = v.to_str() {
            names.extend(
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty()),
            );
        }
    }
    names.extend(HOP_BY_HOP.iter().map(|s| s.to_string()));
    if keep_upgrade {
        names.retain(|n| n != "connection" && n != "upgrade");
    }
    names.sort();
    names.dedup();
    names
}

pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key("upgrade")
        && headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Whether any hop-by-hop header is present; the common request has none but
/// `Connection: keep-alive`, and skipping the strip saves allocations per request.
fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    HOP_BY_HOP.iter().any(|h| headers.contains_key(*h))
}

pub fn strip_request_hop_by_hop(req: &mut RequestHeader) {
    if !has_hop_by_hop(&req.headers) {
        return;
    }
    let keep = is_upgrade(&req.headers);
    // `TE: trailers` says the client takes trailers, which gRPC needs end to end (and the
    // only TE HTTP/2 allows): passed on, unlike any other TE.
    let trailers = req
        .headers
        .get("te")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in hop_by_hop_names(&req.headers, keep) {
        req.remove_header(&name);
    }
    if trailers {
        let _ = req.insert_header("te", "trailers");
    }
}

pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if !has_hop_by_hop(&resp.headers) {
        return;
    }
    let keep = resp.status.as_u16() == 101;
    for name in hop_by_hop_names(&resp.headers, keep) {
        resp.remove_header(&name);
    }
}

/// The three header operations of a Gateway API header modifier; pingora's request and
/// response heads both have them, without a common trait.
pub trait HeaderOps {
    fn set(&mut self, name: String, value: &str) -> pingora::Result<()>;
    fn append(&mut self, name: String, value: &str) -> pingora::Result<()>;
    fn remove(&mut self, name: &str);
}

macro_rules! impl_header_ops {
    ($head:ty) => {
        impl HeaderOps for $head {
            fn set(&mut self, name: String, value: &str) -> pingora::Result<()> {
                self.insert_header(name, value).map(|_| ())
            }
            fn append(&mut self, name: String, value: &str) -> pingora::Result<()> {
                self.append_header(name, value).map(|_| ())
            }
            fn remove(&mut self, name: &str) {
                self.remove_header(name);
            }
        }
    };
}
impl_header_ops!(RequestHeader);
impl_header_ops!(ResponseHeader);

/// Gateway API semantics: set overwrites, add appends, remove deletes.
pub fn apply_edits(head: &mut impl HeaderOps, edits: &HeaderEdits) -> pingora::Result<()> {
    for (name, value) in &edits.set {
        head.set(name.clone(), value)?;
    }
    for (name, value) in &edits.add {
        head.append(name.clone(), value)?;
    }
    for name in &edits.remove {
        head.remove(name);
    }
    Ok(())
}

/// X-Forwarded-For (appended), -Proto and -Host (set when absent).
pub fn set_forwarded(
    req: &mut RequestHeader,
    client_ip: Option<String>,
    tls: bool,
    host: &str,
) -> pingora::Result<()> {
    if let Some(ip) = client_ip {
        let value = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
            _ => ip,
        };
        req.insert_header("x-forwarded-for", value)?;
    }
    if !req.headers.contains_key("x-forwarded-proto") {
        req.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    }
    if !req.headers.contains_key("x-forwarded-host") && !host.is_empty() {
        req.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// Total size of the request head's header lines, as the client sent them.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}
