//! How a churned endpoint's address spells the change that made it (`11.x.y.z`: change id
//! `x.y.z`): written by the churn (`churn.rs`), read back from the proxies' EDS responses by
//! the client (`client.rs`), kept here so neither imports the other.

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use prost::Message;
use std::net::Ipv4Addr;

/// The address spelling change `id` (ids start at 1; 0 means none).
pub fn address(id: u32) -> Ipv4Addr {
    let [_, a, b, c] = id.to_be_bytes();
    Ipv4Addr::new(11, a, b, c)
}

/// The newest change id among one ClusterLoadAssignment's endpoints (0: none churned).
pub fn newest_id(cla: &[u8]) -> u32 {
    let Ok(cla) = ClusterLoadAssignment::decode(cla) else {
        return 0;
    };
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e.address.as_ref(),
            _ => None,
        })
        .filter_map(|a| match &a.address {
            Some(address::Address::SocketAddress(s)) => s.address.parse::<Ipv4Addr>().ok(),
            _ => None,
        })
        .filter(|ip| ip.octets()[0] == 11)
        .map(|ip| u32::from_be_bytes(ip.octets()) & 0x00ff_ffff)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};

    fn cla(ips: &[Ipv4Addr]) -> Vec<u8> {
        let lb_endpoints = ips
            .iter()
            .map(|ip| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip.to_string(),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        ClusterLoadAssignment {
            cluster_name: "outbound|8080||svc-1.ns-1.svc.cluster.local".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn the_newest_churned_endpoint_is_found_and_others_ignored() {
        let bytes = cla(&[address(70_000), "10.100.0.1".parse().unwrap(), address(3)]);
        assert_eq!(newest_id(&bytes), 70_000);
        assert_eq!(newest_id(&cla(&["10.100.0.1".parse().unwrap()])), 0);
        assert_eq!(newest_id(b"\xff not a message"), 0);
    }
}
