//! YAML text -> typed objects. One file may hold many documents and kinds we ignore.

use super::function::FunctionV1beta1;
use super::{
    Component, Configuration, Diagnostic, EndpointSlice, Function, Gateway, ObjectKey, ObjectKind,
    Secret,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub enum ParsedObject {
    Function(Arc<Function>),
    Gateway(Arc<Gateway>),
    EndpointSlice(Arc<EndpointSlice>),
    Component(Arc<Component>),
    Secret(Arc<Secret>),
    Configuration(Arc<Configuration>),
}

impl ParsedObject {
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            ParsedObject::Function(f) => (ObjectKind::Function, &f.metadata),
            ParsedObject::Gateway(g) => (ObjectKind::Gateway, &g.metadata),
            ParsedObject::EndpointSlice(s) => (ObjectKind::EndpointSlice, &s.metadata),
            ParsedObject::Component(c) => (ObjectKind::Component, &c.metadata),
            ParsedObject::Secret(s) => (ObjectKind::Secret, &s.metadata),
            ParsedObject::Configuration(c) => (ObjectKind::Configuration, &c.metadata),
        };
        ObjectKey::new(kind, meta.namespace_or_default(), &meta.name)
    }

    /// Hash of the object's content without `metadata.resourceVersion` (never
    /// serialised), so an event that rewrites an object unchanged is recognised as "no
    /// change". Streams the JSON into the hasher: no copy of the object, no buffer.
    pub fn content_hash(&self) -> u64 {
        struct HashWriter(Sha256);
        impl std::io::Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashWriter(Sha256::new());
        let _ = match self {
            ParsedObject::Function(f) => serde_json::to_writer(&mut w, &**f),
            ParsedObject::Gateway(g) => serde_json::to_writer(&mut w, &**g),
            ParsedObject::EndpointSlice(s) => serde_json::to_writer(&mut w, &**s),
            ParsedObject::Component(c) => serde_json::to_writer(&mut w, &**c),
            ParsedObject::Secret(s) => serde_json::to_writer(&mut w, &**s),
            ParsedObject::Configuration(c) => serde_json::to_writer(&mut w, &**c),
        };
        let digest = w.0.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
    }
}

/// One YAML document of a file: the object it holds, or why it could not be read.
#[derive(Clone, Debug)]
pub struct ParsedDocument {
    pub index: usize,
    /// Known when kind and name could be read even though the rest failed, so the caller
    /// can keep serving the last good version of that object.
    pub key: Option<ObjectKey>,
    pub result: Result<ParsedObject, Diagnostic>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeHeader {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeaderMeta>,
}

#[derive(Deserialize)]
struct HeaderMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// Parses every document of a YAML text. A syntax error ends the file (YAML cannot resume
/// after one) and is returned as `Err`, with its line; the caller then keeps what it had.
pub fn parse_documents(text: &str, file: Option<&str>) -> Result<Vec<ParsedDocument>, Diagnostic> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| {
            Diagnostic::error(format!("document {}: invalid YAML: {e}", index + 1)).in_file(file)
        })?;
        if value.is_null() {
            continue;
        }
        if let Some(doc) = parse_value(index, value, file) {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one object as the Kubernetes API returns it (`origin` names where it came
/// from in diagnostics). `None`: a kind fngate does not read.
pub fn parse_object(value: serde_yaml::Value, origin: Option<&str>) -> Option<ParsedDocument> {
    parse_value(0, value, origin)
}

fn parse_value(
    index: usize,
    value: serde_yaml::Value,
    file: Option<&str>,
) -> Option<ParsedDocument> {
    let header = match TypeHeader::deserialize(&value) {
        Ok(h) => h,
        Err(e) => {
            return Some(ParsedDocument {
                index,
                key: None,
                result: Err(Diagnostic::error(format!(
                    "document {}: not a Kubernetes object: {e}",
                    index + 1
                ))
                .in_file(file)),
            })
        }
    };
    let api_version = header.api_version.unwrap_or_default();
    let kind_name = header.kind.unwrap_or_default();
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let kind = match (group, kind_name.as_str()) {
        ("core.openfunction.io", "Function") => ObjectKind::Function,
        ("networking.openfunction.io", "Gateway") => ObjectKind::Gateway,
        ("discovery.k8s.io", "EndpointSlice") => ObjectKind::EndpointSlice,
        ("dapr.io", "Component") => ObjectKind::Component,
        ("dapr.io", "Configuration") => ObjectKind::Configuration,
        ("", "Secret") if api_version == "v1" => ObjectKind::Secret,
        _ => {
            tracing::debug!(
                file,
                api_version,
                kind = kind_name,
                "skipping object of a kind fngate does not read"
            );
            return None;
        }
    };
    let meta = header.metadata.unwrap_or(HeaderMeta {
        name: None,
        namespace: None,
    });
    let namespace = meta
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = meta.name.unwrap_or_default();
    let key = ObjectKey::new(kind, &namespace, &name);
    let label = key.to_string();
    if name.is_empty() {
        let d = Diagnostic::error("metadata.name is required")
            .in_file(file)
            .on_object(format!("{kind} (document {})", index + 1))
            .at_field("metadata.name");
        return Some(ParsedDocument {
            index,
            key: None,
            result: Err(d),
        });
    }
    let typed = match kind {
        ObjectKind::Function => match api_version.as_str() {
            "core.openfunction.io/v1beta2" => typed::<Function>(value).map(|f| ParsedObject::Function(Arc::new(f))),
            "core.openfunction.io/v1beta1" => typed::<FunctionV1beta1>(value)
                .map(|f| ParsedObject::Function(Arc::new(f.into_v1beta2()))),
            other => Err((
                "apiVersion".to_owned(),
                format!("unsupported version {other:?}; expected core.openfunction.io/v1beta2 or v1beta1"),
            )),
        },
        ObjectKind::Gateway => typed::<Gateway>(value).map(|g| ParsedObject::Gateway(Arc::new(g))),
        ObjectKind::EndpointSlice => {
            typed::<EndpointSlice>(value).map(|s| ParsedObject::EndpointSlice(Arc::new(s)))
        }
        ObjectKind::Component => {
            typed::<Component>(value).map(|c| ParsedObject::Component(Arc::new(c)))
        }
        ObjectKind::Secret => typed::<Secret>(value).map(|s| ParsedObject::Secret(Arc::new(s))),
        ObjectKind::Configuration => {
            typed::<Configuration>(value).map(|c| ParsedObject::Configuration(Arc::new(c)))
        }
    };
    let result = typed.map_err(|(field, message)| {
        Diagnostic::error(message)
            .in_file(file)
            .on_object(label)
            .at_field(field)
    });
    Some(ParsedDocument {
        index,
        key: Some(key),
        result,
    })
}

/// Deserialises with the path of the failing field, so the diagnostic can name it.
fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
}
