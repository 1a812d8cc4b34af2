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
    pub order: RouteOrder,
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
    paths: matchit::Router<PathNode>,
    /// Regex paths, longest pattern first, then by rank.
    regex: Box<[Candidate]>,
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
        if let Ok(m) = self.paths.at(path) {
            let node = m.value;
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
            if let Ok(m) = self.paths.at(key) {
                if let Some(hit) = first_match(&m.value.prefix, path, req) {
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

#[derive(Default)]
pub struct RouteTable {
    exact_hosts: HashMap<Box<str>, Arc<HostBucket>>,
    /// Keyed by the suffix with its leading dot: `*.example.com` -> `.example.com`.
    wildcard_hosts: HashMap<Box<str>, Arc<HostBucket>>,
    any_host: HostBucket,
    len: usize,
    /// Every host bucket by the identity of the entries it was built from, so the next
    /// build reuses buckets whose entries are the same (shared `Arc`s of an unchanged
    /// Function) instead of rebuilding every path index.
    buckets: HashMap<BucketSignature, Arc<HostBucket>>,
}

/// Per entry, in placement order: its rule and conditions (by address: the previous
/// table keeps them alive, so an address cannot be reused meanwhile) and its path.
type BucketSignature = Box<[(usize, usize, u64)]>;

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.len)
            .finish()
    }
}

impl RouteTable {
    pub fn builder() -> RouteTableBuilder {
        RouteTableBuilder::default()
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
        let mut paths = matchit::Router::new();
        for (path, node) in self.nodes {
            let escaped = path.replace('{', "{{").replace('}', "}}");
            let node = PathNode {
                exact: sorted(node.exact),
                prefix: sorted(node.prefix),
            };
            if let Err(e) = paths.insert(escaped, node) {
                tracing::error!(path = &*path, error = %e, "path index rejected a path");
            }
        }
        let mut regex = self.regex;
        regex.sort_by(|(la, a), (lb, b)| lb.cmp(la).then_with(|| a.cmp_rank(b)));
        HostBucket {
            paths,
            regex: regex.into_iter().map(|(_, r)| r.candidate).collect(),
        }
    }
}

/// Entries grouped by the exact list of hostnames they serve: a Function's entries share
/// one list, so its hostnames share one bucket instead of one bucket each.
#[derive(Default)]
pub struct RouteTableBuilder {
    groups: HashMap<Arc<[String]>, Vec<(PathCondition, Arc<str>, Ranked)>>,
    len: usize,
}

impl RouteTableBuilder {
    pub fn add(&mut self, entry: RouteEntry) {
        let RouteEntry {
            hostnames,
            path,
            conditions,
            rule,
            order,
        } = entry;
        let rank = Arc::new((
            conditions.method.is_some(),
            conditions.headers.len(),
            conditions.query.len(),
            order,
        ));
        let key: Arc<str> = match &path {
            PathCondition::Exact(p) | PathCondition::Prefix(p) | PathCondition::Regex(p) => {
                Arc::from(p.as_str())
            }
        };
        let prefix = matches!(path, PathCondition::Prefix(_)).then(|| key.clone());
        let ranked = Ranked {
            rank,
            candidate: Candidate {
                conditions,
                rule,
                prefix,
            },
        };
        self.groups
            .entry(hostnames)
            .or_default()
            .push((path, key, ranked));
        self.len += 1;
    }

    pub fn build(self, previous: Option<&RouteTable>) -> RouteTable {
        // hostname -> the groups serving it; hostnames served by the same groups share a bucket.
        let mut any = BucketBuild::default();
        let mut by_host: HashMap<&str, Vec<usize>> = HashMap::new();
        let groups: Vec<(&Arc<[String]>, &Vec<(PathCondition, Arc<str>, Ranked)>)> =
            self.groups.iter().collect();
        for (gi, (hostnames, entries)) in groups.iter().enumerate() {
            if hostnames.is_empty() {
                for (path, key, r) in entries.iter() {
                    any.place(path, key, r);
                }
            }
            let mut seen = ahash::AHashSet::new();
            for h in hostnames.iter().filter(|h| seen.insert(h.as_str())) {
                by_host.entry(h.as_str()).or_default().push(gi);
            }
        }
        let mut shared: HashMap<Vec<usize>, Arc<HostBucket>> = HashMap::new();
        let mut buckets: HashMap<BucketSignature, Arc<HostBucket>> = HashMap::new();
        let mut exact_hosts = HashMap::new();
        let mut wildcard_hosts = HashMap::new();
        for (host, group_ids) in by_host {
            let bucket = shared
                .entry(group_ids.clone())
                .or_insert_with(|| {
                    let signature: BucketSignature = group_ids
                        .iter()
                        .flat_map(|gi| groups[*gi].1.iter())
                        .map(|(path, _, r)| {
                            (
                                Arc::as_ptr(&r.candidate.rule) as usize,
                                Arc::as_ptr(&r.candidate.conditions) as usize,
                                path_hash(path),
                            )
                        })
                        .collect();
                    let bucket = match previous.and_then(|p| p.buckets.get(&signature)) {
                        Some(unchanged) => unchanged.clone(),
                        None => {
                            let mut b = BucketBuild::default();
                            for gi in &group_ids {
                                for (path, key, r) in groups[*gi].1 {
                                    b.place(path, key, r);
                                }
                            }
                            Arc::new(b.finish())
                        }
                    };
                    buckets.insert(signature, bucket.clone());
                    bucket
                })
                .clone();
            match host.strip_prefix('*') {
                Some(suffix) => wildcard_hosts.insert(Box::from(suffix), bucket),
                None => exact_hosts.insert(Box::from(host), bucket),
            };
        }
        RouteTable {
            exact_hosts,
            wildcard_hosts,
            any_host: any.finish(),
            len: self.len,
            buckets,
        }
    }
}

fn path_hash(path: &PathCondition) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // Fixed keys: hashes are compared across builds.
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    std::mem::discriminant(path).hash(&mut h);
    match path {
        PathCondition::Exact(p) | PathCondition::Prefix(p) | PathCondition::Regex(p) => p.hash(&mut h),
    }
    h.finish()
}
