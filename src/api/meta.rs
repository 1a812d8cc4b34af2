use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: StringMap,
    #[serde(default)]
    pub annotations: StringMap,
    /// RFC 3339; used only for the "oldest route wins" tie-break.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Not serialised: content hashes must not change when only the version does.
    #[serde(default, skip_serializing)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
}

impl ObjectMeta {
    pub fn namespace_or_default(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ObjectKind {
    Function,
    Gateway,
    EndpointSlice,
    Component,
    Secret,
    Configuration,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Function => "Function",
            ObjectKind::Gateway => "Gateway",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Component => "Component",
            ObjectKind::Secret => "Secret",
            ObjectKind::Configuration => "Configuration",
        })
    }
}

/// Identity of an object across versions: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A small map as one sorted boxed slice: labels, annotations, a Function's inline
/// components. Most objects carry a few entries, and a `BTreeMap` allocates room for
/// eleven — at 10,000 objects that is megabytes of empty slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortedMap<V>(Box<[(String, V)]>);

/// Labels and annotations.
pub type StringMap = SortedMap<String>;

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        SortedMap(Box::new([]))
    }
}

impl<V> SortedMap<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<'a, V> IntoIterator for &'a SortedMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<V> FromIterator<(String, V)> for SortedMap<V> {
    /// A repeated key keeps its last value, as a map would.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let map: BTreeMap<String, V> = iter.into_iter().collect();
        SortedMap(map.into_iter().collect())
    }
}

impl<V: Serialize> Serialize for SortedMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SortedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, V>::deserialize(d)?.into_iter().collect())
    }
}
