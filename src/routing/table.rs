use super::conditions::{MatchConditions, PathCondition};
use super::rule::Rule;
use super::RequestView;
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

/// Tie-breaks after path, per Gateway API: oldest object, then namespace/name, then order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RouteOrder {
    /// RFC 3339 timestamps sort as text; objects without one count as newest.
    pub created: Option<Arc<str>>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub rule_index: usize,
    pub match_index: usize,
}

/// One match of one rule, as input to the builder.
#[derive(Clone, Debug)]
pub struct RouteEntry {
    /// Lower-case; `*.suffix` for wildcards; empty = any host. Shared by a function's entries.
    pub hostnames: Arc<[String]>,
    pub path: PathCondition,
    /// For a regex path, `conditions.path_regex` holds the compiled, anchored pattern.
    pub conditions: Arc<MatchConditions>,
    pub rule: Arc<Rule>,
    /// The Function's creationTimestamp; with the rule's Function, rule index and this
    /// match index it is the entry's `RouteOrder` (kept apart: 10,000 Functions hold
    /// tens of thousands of entries).
    pub created: Option<Arc<str>>,
    pub match_index: usize,
}

impl RouteEntry {
    /// Tie-break position among entries of equal path and condition counts.
    pub fn order(&self) -> RouteOrder {
        RouteOrder {
            created: self.created.clone(),
            namespace: self.rule.function.namespace.clone(),
            name: self.rule.function.name.clone(),
            rule_index: self.rule.rule_index,
            match_index: self.match_index,
        }
    }
}

/// The result of a lookup.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    pub rule: &'a Arc<Rule>,
    /// The normalised prefix that matched, for `ReplacePrefixMatch`.
    pub matched_prefix: Option<&'a str>,
}

#[derive(Clone, Debug)]
struct Candidate {
    conditions: Arc<MatchConditions>,
    rule: Arc<Rule>,
    prefix: Option<Arc<str>>,
}

/// Precedence after path: method, header count, query count, then `RouteOrder`. Only
/// needed while building; the built lists are already in this order.
type Rank = (bool, usize, usize, RouteOrder);

#[derive(Clone, Debug)]
struct Ranked {
    rank: Arc<Rank>,
    candidate: Candidate,
}

impl Ranked {
    fn cmp_rank(&self, other: &Self) -> Ordering {
        let (am, ah, aq, ao) = &*self.rank;
        let (bm, bh, bq, bo) = &*other.rank;
        bm.cmp(am)
            .then(bh.cmp(ah))
            .then(bq.cmp(aq))
            .then_with(|| match (&ao.created, &bo.created) {
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| {
                (&ao.namespace, &ao.name, ao.rule_index, ao.match_index).cmp(&(
                    &bo.namespace,
                    &bo.name,
                    bo.rule_index,
                    bo.match_index,
                ))
            })
    }
}

#[derive(Default)]
struct PathNode {
    exact: Box<[Candidate]>,
    prefix: Box<[Candidate]>,
}

#[derive(Default)]
struct PathNodeBuild {
    exact: Vec<Ranked>,
    prefix: Vec<Ranked>,
}

#[derive(Default)]
struct HostBucket {
    paths: PathIndex,
    /// Regex paths, longest pattern first, then by rank.
    regex: Box<[Candidate]>,
}

/// Exact and prefix paths of one bucket. A Function's host typically has a handful of
/// paths, and a matchit tree costs ~1.7 KiB for four (a node is ~170 bytes and each
/// child list starts with room for four), 17 MB at 10,000 Functions; a sorted list of a
/// few is a tenth of that and as fast. Hosts with many paths (OpenFunction's path-based
/// routing puts every Function under one host) get the matchit tree.
enum PathIndex {
    Few(Box<[(Arc<str>, PathNode)]>),
    /// Boxed: the tree's root node is ~170 bytes and most buckets are `Few`.
    Many(Box<matchit::Router<PathNode>>),
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex::Few(Box::default())
    }
}

impl PathIndex {
    /// Paths up to this many are a sorted list.
    const FEW: usize = 16;

    fn get(&self, path: &str) -> Option<&PathNode> {
        match self {
            PathIndex::Few(list) => list
                .binary_search_by(|(p, _)| (**p).cmp(path))
                .ok()
                .map(|i| &list[i].1),
            PathIndex::Many(router) => router.at(path).ok().map(|m| m.value),
        }
    }
}

fn first_match<'a>(
    list: &'a [Candidate],
    path: &str,
    req: &impl RequestView,
) -> Option<RouteMatch<'a>> {
    list.iter()
        .find(|c| c.conditions.matches(path, req))
        .map(|c| RouteMatch {
            rule: &c.rule,
            matched_prefix: c.prefix.as_deref(),
        })
}

impl HostBucket {
    fn find<'a>(&'a self, path: &str, req: &impl RequestView) -> Option<RouteMatch<'a>> {
        if let Some(node) = self.paths.get(path) {
            if let Some(hit) =
                first_match(&node.exact, path, req).or_else(|| first_match(&node.prefix, path, req))
            {
                return Some(hit);
            }
        }
        // Shorter prefixes, longest first, at segment boundaries only.
        for (i, _) in path.rmatch_indices('/') {
            let key = if i == 0 { "/" } else { &path[..i] };
            if key.len() == path.len() {
                continue;
            }
            if let Some(node) = self.paths.get(key) {
                if let Some(hit) = first_match(&node.prefix, path, req) {
                    return Some(hit);
                }
            }
        }
        first_match(&self.regex, path, req)
    }
}

/// Lower-cases a Host value and drops its port (`[v6]:port` included).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.find(']').map(|i| &host[..=i]).unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let trimmed = without_port.trim_end_matches('.');
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// A flattened, serialisable view of one entry, for `/routes` and `fngate routes`.
#[derive(Clone, Debug, Serialize)]
pub struct RouteSummary {
    pub function: String,
    pub rule: usize,
    pub hostnames: Vec<String>,
    pub path: String,
    pub method: Option<String>,
    pub headers: Vec<String>,
    pub query: Vec<String>,
    pub backends: Vec<String>,
    pub redirect: bool,
}

impl RouteEntry {
    pub fn summary(&self) -> RouteSummary {
        let rule = &self.rule;
        RouteSummary {
            function: format!("{}/{}", rule.function.namespace, rule.function.name),
            rule: rule.rule_index,
            hostnames: self.hostnames.to_vec(),
            path: self.path.describe(),
            method: self.conditions.method.clone(),
            headers: self
                .conditions
                .headers
                .iter()
                .map(|h| format!("{}{}", h.name, h.value.describe()))
                .collect(),
            query: self
                .conditions
                .query
                .iter()
                .map(|h| format!("{}{}", h.name, h.value.describe()))
                .collect(),
            backends: rule
                .backends
                .iter()
                .map(|b| {
                    let port = b
                        .target
                        .port
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "*".into());
                    format!(
                        "{}/{}:{}*{}",
                        b.target.namespace, b.target.service, port, b.weight
                    )
                })
                .collect(),
            redirect: rule.redirect().is_some(),
        }
    }
}

/// The entries of one Function: the unit the table is updated by.
pub type EntrySet = Arc<[RouteEntry]>;

#[derive(Default)]
pub struct RouteTable {
    exact_hosts: HashMap<Arc<str>, Arc<HostBucket>>,
    /// Keyed by the suffix with its leading dot: `*.example.com` -> `.example.com`.
    wildcard_hosts: HashMap<Arc<str>, Arc<HostBucket>>,
    any_host: Arc<HostBucket>,
    len: usize,
    /// Each hostname as written (`*.x` for wildcards, "" for entries without any) -> the
    /// entry sets serving it: what an update needs to rebuild only the hosts it touches.
    serving: HashMap<Arc<str>, Arc<[EntrySet]>>,
}

/// Identity of a bucket's entries: rule and conditions by address (the entries are
/// alive while the table being built holds them).
type BucketSignature = Box<[(usize, usize)]>;

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.len)
            .finish()
    }
}

impl RouteTable {
    /// A table of these entry sets.
    pub fn from_sets(sets: impl IntoIterator<Item = EntrySet>) -> RouteTable {
        let added: Vec<EntrySet> = sets.into_iter().collect();
        RouteTable::default().updated(&[], &added)
    }

    /// This table with the `removed` entry sets (compared by identity) taken out and the
    /// `added` ones put in. Only the hosts they serve are rebuilt; every other host keeps
    /// its bucket, so one changed Function among thousands costs one bucket.
    pub fn updated(&self, removed: &[EntrySet], added: &[EntrySet]) -> RouteTable {
        let mut serving = self.serving.clone();
        let mut exact_hosts = self.exact_hosts.clone();
        let mut wildcard_hosts = self.wildcard_hosts.clone();
        let mut any_host = self.any_host.clone();
        let mut len = self.len;
        let mut affected: Vec<Arc<str>> = Vec::new();
        let mut seen = ahash::AHashSet::new();
        for set in removed {
            len -= set.len();
            for host in hosts_of(set) {
                let Some((key, list)) = serving.get_key_value(host) else {
                    continue;
                };
                let key = key.clone();
                let rest: Arc<[EntrySet]> = list
                    .iter()
                    .filter(|s| !Arc::ptr_eq(s, set))
                    .cloned()
                    .collect();
                if rest.is_empty() {
                    serving.remove(host);
                } else {
                    serving.insert(key.clone(), rest);
                }
                if seen.insert(key.clone()) {
                    affected.push(key);
                }
            }
        }
        for set in added {
            len += set.len();
            for host in hosts_of(set) {
                let (key, list): (Arc<str>, Arc<[EntrySet]>) = match serving.get_key_value(host) {
                    Some((k, l)) => (
                        k.clone(),
                        l.iter()
                            .cloned()
                            .chain(std::iter::once(set.clone()))
                            .collect(),
                    ),
                    None => (Arc::from(host), Arc::from([set.clone()])),
                };
                serving.insert(key.clone(), list);
                if seen.insert(key.clone()) {
                    affected.push(key);
                }
            }
        }
        // Hosts served by the same entries share one bucket.
        let mut shared: HashMap<BucketSignature, Arc<HostBucket>> = HashMap::new();
        for host in affected {
            let entries: Vec<&RouteEntry> = serving
                .get(&*host)
                .into_iter()
                .flat_map(|sets| sets.iter().flat_map(|s| s.iter()))
                .filter(|e| serves(e, &host))
                .collect();
            if host.is_empty() {
                any_host = Arc::new(bucket_of(&entries));
                continue;
            }
            let (map, key): (_, Arc<str>) = match host.strip_prefix('*') {
                Some(suffix) => (&mut wildcard_hosts, Arc::from(suffix)),
                None => (&mut exact_hosts, host.clone()),
            };
            if entries.is_empty() {
                map.remove(&*key);
                continue;
            }
            let signature: BucketSignature = entries
                .iter()
                .map(|e| {
                    (
                        Arc::as_ptr(&e.rule) as usize,
                        Arc::as_ptr(&e.conditions) as usize,
                    )
                })
                .collect();
            let bucket = shared
                .entry(signature)
                .or_insert_with(|| Arc::new(bucket_of(&entries)))
                .clone();
            map.insert(key, bucket);
        }
        RouteTable {
            exact_hosts,
            wildcard_hosts,
            any_host,
            len,
            serving,
        }
    }

    /// Finds the rule for a request. `path` excludes the query string.
    pub fn find<'a>(
        &'a self,
        host: &str,
        path: &str,
        req: &impl RequestView,
    ) -> Option<RouteMatch<'a>> {
        let host = normalize_host(host);
        let path = if path.is_empty() { "/" } else { path };
        if let Some(b) = self.exact_hosts.get(host.as_ref()) {
            if let Some(hit) = b.find(path, req) {
                return Some(hit);
            }
        }
        if !self.wildcard_hosts.is_empty() {
            for (i, _) in host.match_indices('.') {
                if let Some(b) = self.wildcard_hosts.get(&host[i..]) {
                    if let Some(hit) = b.find(path, req) {
                        return Some(hit);
                    }
                }
            }
        }
        self.any_host.find(path, req)
    }

    /// Number of route matches (entries) in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Default)]
struct BucketBuild {
    nodes: HashMap<Arc<str>, PathNodeBuild>,
    regex: Vec<(usize, Ranked)>,
}

impl BucketBuild {
    fn place(&mut self, path: &PathCondition, key: &Arc<str>, ranked: &Ranked) {
        match path {
            PathCondition::Exact(_) => self
                .nodes
                .entry(key.clone())
                .or_default()
                .exact
                .push(ranked.clone()),
            PathCondition::Prefix(_) => self
                .nodes
                .entry(key.clone())
                .or_default()
                .prefix
                .push(ranked.clone()),
            PathCondition::Regex(p) => self.regex.push((p.len(), ranked.clone())),
        }
    }

    fn finish(self) -> HostBucket {
        fn sorted(mut v: Vec<Ranked>) -> Box<[Candidate]> {
            v.sort_by(Ranked::cmp_rank);
            v.into_iter().map(|r| r.candidate).collect()
        }
        let mut nodes: Vec<(Arc<str>, PathNode)> = self
            .nodes
            .into_iter()
            .map(|(path, node)| {
                let node = PathNode {
                    exact: sorted(node.exact),
                    prefix: sorted(node.prefix),
                };
                (path, node)
            })
            .collect();
        let paths = if nodes.len() <= PathIndex::FEW {
            nodes.sort_by(|(a, _), (b, _)| a.cmp(b));
            PathIndex::Few(nodes.into())
        } else {
            let mut router = matchit::Router::new();
            for (path, node) in nodes {
                let escaped = path.replace('{', "{{").replace('}', "}}");
                if let Err(e) = router.insert(escaped, node) {
                    tracing::error!(path = &*path, error = %e, "path index rejected a path");
                }
            }
            PathIndex::Many(Box::new(router))
        };
        let mut regex = self.regex;
        regex.sort_by(|(la, a), (lb, b)| lb.cmp(la).then_with(|| a.cmp_rank(b)));
        HostBucket {
            paths,
            regex: regex.into_iter().map(|(_, r)| r.candidate).collect(),
        }
    }
}

/// The hostnames an entry set serves, each once ("" for entries without hostnames).
fn hosts_of(set: &[RouteEntry]) -> Vec<&str> {
    let mut hosts: Vec<&str> = Vec::new();
    for e in set {
        if e.hostnames.is_empty() && !hosts.contains(&"") {
            hosts.push("");
        }
        for h in e.hostnames.iter() {
            if !hosts.contains(&h.as_str()) {
                hosts.push(h);
            }
        }
    }
    hosts
}

fn serves(entry: &RouteEntry, host: &str) -> bool {
    if host.is_empty() {
        entry.hostnames.is_empty()
    } else {
        entry.hostnames.iter().any(|h| h == host)
    }
}

fn bucket_of(entries: &[&RouteEntry]) -> HostBucket {
    let mut b = BucketBuild::default();
    for e in entries {
        let rank = Arc::new((
            e.conditions.method.is_some(),
            e.conditions.headers.len(),
            e.conditions.query.len(),
            e.order(),
        ));
        let key: Arc<str> = match &e.path {
            PathCondition::Exact(p) | PathCondition::Prefix(p) | PathCondition::Regex(p) => {
                Arc::from(p.as_str())
            }
        };
        let prefix = matches!(e.path, PathCondition::Prefix(_)).then(|| key.clone());
        let ranked = Ranked {
            rank,
            candidate: Candidate {
                conditions: e.conditions.clone(),
                rule: e.rule.clone(),
                prefix,
            },
        };
        b.place(&e.path, &key, &ranked);
    }
    b.finish()
}
