//! Gateway servers in `tls.mode: AUTO_PASSTHROUGH` (Istio's east-west gateway). A client's mesh
//! mTLS connection names its destination in its SNI, `outbound_.PORT_.SUBSET_.HOST`, as every
//! sidecar's ISTIO_MUTUAL cluster sends it; the gateway forwards the connection untouched to
//! that destination's endpoints, so the TLS ends at the destination's sidecar, never here, and
//! no VirtualService is involved. Each destination gets an "SNI-DNAT" cluster named like its
//! SNI: its outbound cluster without TLS origination, reading the same endpoints. Only hosts
//! the server's `hosts` admit get one.

use crate::resource::{Resource, SharedResource};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use prost::Message;
use std::collections::BTreeMap;

/// The server's TLS mode that routes by SNI alone.
pub const AUTO_PASSTHROUGH: &str = "AUTO_PASSTHROUGH";

/// `outbound|PORT|SUBSET|HOST` as its SNI, `outbound_.PORT_.SUBSET_.HOST`, with the host.
fn sni_of(cluster: &str) -> Option<(String, &str)> {
    let mut parts = cluster.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port: u32 = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    Some((super::cluster::sni(port, subset, host), host))
}

/// The SNI-DNAT clusters, by name, of the outbound `clusters` whose host `admits` says yes.
pub fn clusters<'a>(
    clusters: impl IntoIterator<Item = (&'a String, &'a SharedResource)>,
    admits: impl Fn(&str) -> bool,
) -> BTreeMap<String, SharedResource> {
    let mut out = BTreeMap::new();
    for (name, r) in clusters {
        let Some((sni, host)) = sni_of(name) else {
            continue;
        };
        if !admits(host) {
            continue;
        }
        let Ok(mut c) = Cluster::decode(r.value()) else {
            continue;
        };
        // The client's TLS passes through; this cluster only carries its bytes.
        c.transport_socket = None;
        c.transport_socket_matches.clear();
        // Endpoints by EDS stay those of the outbound cluster (the name it asked under).
        if let Some(eds) = c.eds_cluster_config.as_mut()
            && eds.service_name.is_empty()
        {
            eds.service_name = name.clone();
        }
        if let Some(la) = c.load_assignment.as_mut() {
            la.cluster_name = sni.clone();
        }
        c.name = sni.clone();
        out.insert(sni.clone(), Resource::encode(sni, &c));
    }
    out
}
