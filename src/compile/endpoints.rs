//! EndpointSlices -> ready addresses per Service.

use super::Snapshot;
use crate::api::{Diagnostic, ObjectKey, ObjectKind, ParsedObject};
use crate::plan::{EndpointAddress, Endpoints, ServiceEndpoints, ServiceKey};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub(super) fn build(snapshot: &Snapshot, diagnostics: &mut Vec<Diagnostic>) -> Endpoints {
    let mut merged: BTreeMap<ServiceKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    let start = ObjectKey::new(ObjectKind::EndpointSlice, "", "");
    for (key, entry) in snapshot.objects.range(start..) {
        if key.kind != ObjectKind::EndpointSlice {
            break;
        }
        let ParsedObject::EndpointSlice(slice) = &entry.object else {
            continue;
        };
        let label = key.to_string();
        let file = entry.file.as_deref();
        let Some(service) = slice.service_name() else {
            diagnostics.push(
                Diagnostic::warning(
                    "EndpointSlice has no kubernetes.io/service-name label; ignored",
                )
                .on_object(label)
                .in_file(file)
                .at_field("metadata.labels"),
            );
            continue;
        };
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            match p
                .port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
            {
                Some(n) => ports.push((p.name.clone(), n)),
                None => diagnostics.push(
                    Diagnostic::error("port must be a number from 1 to 65535")
                        .on_object(label.clone())
                        .in_file(file)
                        .at_field(format!("ports[{i}].port")),
                ),
            }
        }
        let ports: Arc<[(Option<String>, u16)]> = ports.into();
        let bucket = merged
            .entry(ServiceKey {
                namespace: key.namespace.clone(),
                name: service.to_owned(),
            })
            .or_default();
        for (i, ep) in slice.endpoints.iter().enumerate() {
            // Kubernetes: an unset `ready` means ready.
            let ready = ep.conditions.ready.unwrap_or(true);
            for (j, addr) in ep.addresses.iter().enumerate() {
                match addr.parse::<IpAddr>() {
                    Ok(ip) if ready => bucket.0.push(EndpointAddress {
                        ip,
                        ports: ports.clone(),
                    }),
                    Ok(ip) => bucket.1.push(EndpointAddress {
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
    let mut endpoints = Endpoints::default();
    for (key, (ready, not_ready)) in merged {
        endpoints.insert(key, ServiceEndpoints::new(ready, not_ready));
    }
    endpoints
}
