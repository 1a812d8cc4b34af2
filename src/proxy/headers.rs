//! Header handling between client and function: route edits, forwarding headers, and
//! hop-by-hop stripping (RFC 9110 §7.6.1) that leaves WebSocket upgrades intact.

use crate::routing::HeaderEdits;
use http::header::{HeaderName, CONNECTION, PROXY_AUTHENTICATE, TE, TRAILER, UPGRADE};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

// Header names as values, not strings: a lookup by `&str` parses and hashes the name
// every time, and this runs for every request and response.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    UPGRADE,
    PROXY_AUTHENTICATE,
];

pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes the hop-by-hop headers, and those `Connection` lists; with `keep_upgrade`,
/// `Connection` and `Upgrade` stay (a WebSocket handshake). Allocates only for a name
/// `Connection` lists that is not a standard hop-by-hop one.
fn strip_hop_by_hop(head: &mut impl HeaderOps, keep_upgrade: bool) {
    // One pass over the names present (most heads carry none, or only `Connection`),
    // instead of a hashed lookup per hop-by-hop name.
    let mut present = [false; 7];
    for name in head.headers().keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let mut listed: Vec<HeaderName> = Vec::new();
    // HOP_BY_HOP[0] is Connection: only it lists more names.
    if present[0] {
        for value in head.headers().get_all(CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if token.is_empty()
                    || HOP_BY_HOP
                        .iter()
                        .any(|h| h.as_str().eq_ignore_ascii_case(token))
                {
                    continue;
                }
                // from_bytes lower-cases.
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if !(keep_upgrade && (name == CONNECTION || name == UPGRADE)) {
            head.remove_name(name);
        }
    }
    for name in &listed {
        if head.headers().contains_key(name) {
            head.remove_name(name);
        }
    }
}

/// Whether `headers` has any of `names`: a pass over the names present, comparing (not
/// hashing), cheaper than a lookup per name for the few headers a request carries.
pub fn has_any(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|k| names.contains(k))
}

pub fn strip_request_hop_by_hop(req: &mut RequestHeader) {
    let keep = is_upgrade(&req.headers);
    // `TE: trailers` says the client takes trailers, which gRPC needs end to end (and the
    // only TE HTTP/2 allows): passed on, unlike any other TE.
    let trailers = req
        .headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(req, keep);
    if trailers {
        let _ = req.insert_header(TE, "trailers");
    }
}

pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    let keep = resp.status.as_u16() == 101;
    strip_hop_by_hop(resp, keep);
}

/// The three header operations of a Gateway API header modifier; pingora's request and
/// response heads both have them, without a common trait.
pub trait HeaderOps {
    fn set(&mut self, name: String, value: &str) -> pingora::Result<()>;
    fn append(&mut self, name: String, value: &str) -> pingora::Result<()>;
    fn remove(&mut self, name: &str);
    fn remove_name(&mut self, name: &HeaderName);
    fn headers(&self) -> &HeaderMap;
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
            fn remove_name(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn headers(&self) -> &HeaderMap {
                &self.headers
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
    client_ip: Option<std::net::IpAddr>,
    tls: bool,
    host: &str,
) -> pingora::Result<()> {
    if let Some(ip) = client_ip {
        let value = match req
            .headers
            .get(X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.is_empty() => format!("{prev}, {}", IpText::of(ip).as_str()),
            _ => IpText::of(ip).as_str().to_owned(),
        };
        req.insert_header("x-forwarded-for", value)?;
    }
    // Names as `&'static str`: pingora copies a `HeaderName` that is not one of its titled
    // names into its case map, and takes a static string as it is. Appending a header
    // that is absent spares pingora's remove-before-insert.
    if !req.headers.contains_key(X_FORWARDED_PROTO) {
        req.append_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    }
    if !req.headers.contains_key(X_FORWARDED_HOST) && !host.is_empty() {
        req.append_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// An address as text, IPv4 written by hand: `Display` goes through the formatting
/// machinery, a measurable share of a proxied request.
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn of(ip: std::net::IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                let text = v6.to_string();
                t.buf[..text.len()].copy_from_slice(text.as_bytes());
                t.len = text.len();
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::IpText;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(parsed).as_str(), parsed.to_string());
        }
    }
}

/// Total size of the request head's header lines, as the client sent them.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}
