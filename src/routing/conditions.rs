use super::RequestView;
use regex::Regex;

#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    /// Anchored: the whole value must match.
    Regex(Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == value,
            StringMatch::Regex(re) => re.is_match(value),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            StringMatch::Exact(v) => format!("={v}"),
            StringMatch::Regex(re) => format!("~{}", re.as_str()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct HeaderCondition {
    /// Lower-cased for headers; as written for query parameters (case-sensitive names).
    pub name: String,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathCondition {
    Exact(String),
    /// Normalised: no trailing slash except for `/` itself.
    Prefix(String),
    Regex(String),
}

impl PathCondition {
    pub fn describe(&self) -> String {
        match self {
            PathCondition::Exact(p) => format!("Exact {p}"),
            PathCondition::Prefix(p) => format!("PathPrefix {p}"),
            PathCondition::Regex(p) => format!("RegularExpression {p}"),
        }
    }
}

/// Everything of an HTTPRoute match except the path and host, which the index handles
/// (and the path regex, checked here when the path condition is a regex).
#[derive(Clone, Debug, Default)]
pub struct MatchConditions {
    pub method: Option<String>,
    pub headers: Vec<HeaderCondition>,
    pub query: Vec<HeaderCondition>,
    pub path_regex: Option<Regex>,
}

impl MatchConditions {
    pub fn matches(&self, path: &str, req: &impl RequestView) -> bool {
        if let Some(m) = &self.method {
            if m != req.method() {
                return false;
            }
        }
        if let Some(re) = &self.path_regex {
            if !re.is_match(path) {
                return false;
            }
        }
        for h in &self.headers {
            match req.header(&h.name) {
                Some(v) if h.value.matches(v) => {}
                _ => return false,
            }
        }
        if !self.query.is_empty() {
            let query = req.query().unwrap_or("");
            for q in &self.query {
                match first_query_value(query, &q.name) {
                    Some(v) if q.value.matches(&v) => {}
                    _ => return false,
                }
            }
        }
        true
    }
}

/// The first value of a query parameter, percent-decoded.
fn first_query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` and `+` of a query string component (a malformed escape stays as is).
pub fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_plus_and_truncated_input() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(
            first_query_value("a=1&b=x%3Dy&a=2", "b").as_deref(),
            Some("x=y")
        );
        assert_eq!(first_query_value("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(first_query_value("A=1", "a"), None);
    }
}
