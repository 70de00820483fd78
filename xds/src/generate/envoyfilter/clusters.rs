//! CLUSTER patches (MERGE, ADD, REMOVE) applied in order to a layer of clusters, matched by
//! `match.cluster` against meshd's cluster names (`outbound|PORT|SUBSET|HOST`,
//! `inbound|PORT||`; other clusters only by name).

use super::{Compiled, Work, adds_to};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use meshd_model::envoyfilter::{ClusterMatch, FilterOperation, PatchContext};
use prost::Message;

/// Whether `match.cluster` selects the cluster named `name`.
pub(super) fn matches(m: &ClusterMatch, name: &str) -> bool {
    let parts: Vec<&str> = name.splitn(4, '|').collect();
    match parts.as_slice() {
        [dir @ ("outbound" | "inbound"), port, subset, host] => {
            let port: u32 = port.parse().unwrap_or(0);
            // An inbound cluster is the workload's own port: no service, no subset.
            let host = if *dir == "inbound" { "" } else { host };
            m.matches(name, port, subset, host)
        }
        _ => {
            m.port_number.is_none()
                && m.service.is_none()
                && m.subset.is_none()
                && m.name.as_deref().is_none_or(|n| n == name)
        }
    }
}

/// Applies the cluster-layer patches, in order.
pub(super) fn apply(work: &mut Work<'_, Cluster>, proxy: PatchContext, patches: &[&Compiled]) {
    for p in patches {
        let Compiled::Cluster(p) = p else {
            continue;
        };
        match (p.operation, &p.value) {
            (FilterOperation::Add, Some(v)) if adds_to(p.context, proxy) => {
                work.add(v.name.clone(), v.clone());
            }
            (FilterOperation::Remove, _) => {
                for name in work.names().into_iter().filter(|n| matches(&p.m, n)) {
                    work.remove(&name);
                }
            }
            (FilterOperation::Merge, Some(v)) => {
                let bytes = v.encode_to_vec();
                for name in work.names().into_iter().filter(|n| matches(&p.m, n)) {
                    work.update(&name, |c| c.merge(bytes.as_slice()).is_ok());
                }
            }
            _ => {}
        }
    }
}
