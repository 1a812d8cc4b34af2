//! EndpointSlices -> ready addresses per Service.

use super::{CatalogEntry, Snapshot};
use crate::api::{Diagnostic, EndpointSlice, ObjectKey, ObjectKind, ParsedObject};
use crate::plan::{EndpointAddress, Endpoints, PortSpec, ServiceEndpoints, ServiceKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The `appProtocol` Kubernetes defines for HTTP/2 over cleartext (KEP-3726).
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

pub(super) fn build(snapshot: &Snapshot, previous: Option<&Arc<Endpoints>>) -> Arc<Endpoints> {
    let slices_fingerprint = slices_fingerprint(snapshot);
    if let Some(unchanged) = previous.filter(|p| p.slices_fingerprint == slices_fingerprint) {
        return unchanged.clone();
    }
    let mut diagnostics = Vec::new();
    let mut by_service: BTreeMap<ServiceKey, Vec<(&ObjectKey, &CatalogEntry, &EndpointSlice)>> =
        BTreeMap::new();
    let start = ObjectKey::new(ObjectKind::EndpointSlice, "", "");
    for (key, entry) in snapshot.objects.range(start..) {
        if key.kind != ObjectKind::EndpointSlice {
            break;
        }
        let ParsedObject::EndpointSlice(slice) = &*entry.object else {
            continue;
        };
        let Some(service) = slice.service_name() else {
            diagnostics.push(
                Diagnostic::warning(
                    "EndpointSlice has no kubernetes.io/service-name label; ignored",
                )
                .on_object(key.to_string())
                .in_file(entry.file.as_deref())
                .at_field("metadata.labels"),
            );
            continue;
        };
        by_service
            .entry(ServiceKey {
                namespace: key.namespace.clone(),
                name: service.to_owned(),
            })
            .or_default()
            .push((key, entry, slice));
    }
    let mut endpoints = Endpoints::default();
    for (service, slices) in by_service {
        let mut h = Sha256::new();
        for (key, entry, _) in &slices {
            h.update(key.name.as_bytes());
            h.update([0]);
            h.update(entry.version.to_be_bytes());
        }
        let fingerprint = u64::from_be_bytes(h.finalize()[..8].try_into().expect("32 bytes"));
        let unchanged = previous.and_then(|p| {
            let (fp, problems) = p.fingerprints.get(&service)?;
            let eps = p.get(&service.namespace, &service.name)?;
            (*fp == fingerprint).then(|| (eps.clone(), problems.clone()))
        });
        let (eps, problems) = match unchanged {
            Some(reused) => reused,
            None => {
                let mut problems = Vec::new();
                let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
                for (key, entry, slice) in &slices {
                    read_slice(key, entry, slice, &mut ready, &mut not_ready, &mut problems);
                }
                (Arc::new(ServiceEndpoints::new(ready, not_ready)), problems)
            }
        };
        diagnostics.extend(problems.iter().cloned());
        endpoints
            .fingerprints
            .insert(service.clone(), (fingerprint, problems));
        endpoints.insert_shared(service, eps);
    }
    endpoints.slices_fingerprint = slices_fingerprint;
    endpoints.diagnostics = diagnostics;
    Arc::new(endpoints)
}

fn slices_fingerprint(snapshot: &Snapshot) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // Fixed keys: compared across compiles.
    let mut h = ahash::RandomState::with_seeds(7, 11, 13, 17).build_hasher();
    let start = ObjectKey::new(ObjectKind::EndpointSlice, "", "");
    for (key, entry) in snapshot.objects.range(start..) {
        if key.kind != ObjectKind::EndpointSlice {
            break;
        }
        key.namespace.hash(&mut h);
        key.name.hash(&mut h);
        entry.version.hash(&mut h);
    }
    h.finish()
}

fn read_slice(
    key: &ObjectKey,
    entry: &CatalogEntry,
    slice: &EndpointSlice,
    ready_out: &mut Vec<EndpointAddress>,
    not_ready_out: &mut Vec<EndpointAddress>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let label = key.to_string();
    let file = entry.file.as_deref();
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        match p
            .port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
        {
            Some(n) => ports.push(PortSpec {
                name: p.name.clone(),
                number: n,
                h2c: p.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL),
            }),
            None => diagnostics.push(
                Diagnostic::error("port must be a number from 1 to 65535")
                    .on_object(label.clone())
                    .in_file(file)
                    .at_field(format!("ports[{i}].port")),
            ),
        }
    }
    let ports: Arc<[PortSpec]> = ports.into();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Kubernetes: an unset `ready` means ready.
        let ready = ep.conditions.ready.unwrap_or(true);
        for (j, addr) in ep.addresses.iter().enumerate() {
            match addr.parse::<IpAddr>() {
                Ok(ip) if ready => ready_out.push(EndpointAddress {
                    ip,
                    ports: ports.clone(),
                }),
                Ok(ip) => not_ready_out.push(EndpointAddress {
                    ip,
                    ports: ports.clone(),
                }),
                Err(_) => diagnostics.push(
                    Diagnostic::error(format!("{addr:?} is not an IP address"))
                        .on_object(label.clone())
                        .in_file(file)
                        .at_field(format!("endpoints[{i}].addresses[{j}]")),
                ),
            }
        }
    }
}
