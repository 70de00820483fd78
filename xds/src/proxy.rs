//! Who is on the other end of a stream: the authenticated identity and what its Envoy node says.

use meshd_model::registry::Workload;
use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// A sidecar capturing its pod's traffic.
    Sidecar,
    /// A gateway (ingress or egress): Envoy in router mode.
    Router,
}

/// An identity proven by the stream's credential (never by what the node claims).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
}

impl Identity {
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Proxy {
    /// Envoy's node id, e.g. `sidecar~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local`.
    pub id: String,
    pub node_type: NodeType,
    pub ip: Option<String>,
    pub identity: Identity,
    /// The node's string metadata (bounded: [`NodeMetadata::from_fields`]); what it claims of
    /// itself, read only by EnvoyFilter `match.proxy`, which chooses among patches for the
    /// proxy's own config.
    pub metadata: NodeMetadata,
}

/// String fields of an Envoy node's metadata, at most [`NodeMetadata::MAX_FIELDS`] of them and
/// [`NodeMetadata::MAX_BYTES`] in all (a node is hostile input; the rest is dropped).
pub type NodeMetadata = std::collections::BTreeMap<String, String>;

/// Builds [`NodeMetadata`] from a node's fields.
pub trait NodeMetadataExt {
    const MAX_FIELDS: usize = 32;
    const MAX_BYTES: usize = 4096;
    fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> NodeMetadata;
}

impl NodeMetadataExt for NodeMetadata {
    fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> NodeMetadata {
        let mut out = NodeMetadata::new();
        let mut bytes = 0;
        for (k, v) in fields {
            if out.len() == Self::MAX_FIELDS || bytes + k.len() + v.len() > Self::MAX_BYTES {
                break;
            }
            bytes += k.len() + v.len();
            out.insert(k.to_string(), v.to_string());
        }
        out
    }
}

impl NodeType {
    /// What a workload's Envoy runs as: a gateway (label `istio: …gateway`) in router mode,
    /// any other a sidecar.
    pub fn of_workload(w: &Workload) -> NodeType {
        let gateway = w
            .labels
            .get("istio")
            .is_some_and(|v| v.ends_with("gateway"));
        if gateway {
            NodeType::Router
        } else {
            NodeType::Sidecar
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        }
    }
}

impl Proxy {
    /// The proxy a workload runs, as its Envoy would present itself.
    pub fn for_workload(w: &Workload, trust_domain: &str) -> Proxy {
        let node_type = NodeType::of_workload(w);
        Proxy {
            id: NodeId::format(node_type, &w.address, &w.name, &w.namespace),
            node_type,
            ip: Some(w.address.clone()),
            identity: Identity {
                workload: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                trust_domain: trust_domain.to_string(),
            },
            metadata: NodeMetadata::new(),
        }
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeId {
    pub node_type: NodeType,
    pub ip: String,
    pub workload: String,
    pub namespace: String,
}

/// Longest node id accepted; Istio's are well under 300 bytes.
pub const MAX_NODE_ID_LEN: usize = 1024;

impl NodeId {
    /// Istio's node id layout: `TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN`.
    pub fn parse(id: &str) -> Result<NodeId, String> {
        if id.len() > MAX_NODE_ID_LEN {
            return Err(format!(
                "node id is {} bytes, longer than the {MAX_NODE_ID_LEN} accepted",
                id.len()
            ));
        }
        let mut parts = id.split('~');
        let (Some(ty), Some(ip), Some(pod), Some(domain), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(format!(
                "node id `{id}` is not TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN"
            ));
        };
        let node_type = match ty {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => return Err(format!("node id `{id}`: unknown proxy type `{other}`")),
        };
        let (workload, namespace) = pod
            .rsplit_once('.')
            .filter(|(w, n)| !w.is_empty() && !n.is_empty())
            .ok_or_else(|| format!("node id `{id}`: `{pod}` is not NAME.NAMESPACE"))?;
        // The suffix names the namespace again; anything else would let one workload present
        // unboundedly many distinct ids.
        let suffix_ok = domain
            .strip_prefix(namespace)
            .and_then(|d| d.strip_prefix(".svc."))
            .is_some_and(|d| {
                !d.is_empty()
                    && d.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
            });
        if !suffix_ok {
            return Err(format!(
                "node id `{id}`: `{domain}` is not `{namespace}.svc.DOMAIN`"
            ));
        }
        Ok(NodeId {
            node_type,
            ip: ip.to_string(),
            workload: workload.to_string(),
            namespace: namespace.to_string(),
        })
    }

    pub fn format(node_type: NodeType, ip: &str, workload: &str, namespace: &str) -> String {
        format!(
            "{}~{ip}~{workload}.{namespace}~{namespace}.svc.cluster.local",
            node_type.as_str()
        )
    }
}

/// Why a node may not speak for the identity its stream proved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("{0}")]
    Malformed(String),
    #[error("node `{node}` claims {claimed} but the credential is for {proven}")]
    OtherWorkload {
        node: String,
        claimed: String,
        proven: String,
    },
    #[error(
        "node `{node}`: workload {workload} is not in the registry (no WorkloadEntry or running Pod of that name)"
    )]
    UnknownWorkload { node: String, workload: String },
    #[error(
        "node `{node}`: the credential is for service account `{proven}` but workload {workload} now runs as `{current}` (a stale credential: issue a new one)"
    )]
    ServiceAccountChanged {
        node: String,
        workload: String,
        proven: String,
        current: String,
    },
    #[error("node `{node}`: IP `{claimed}` is not the address of workload {workload}")]
    OtherAddress {
        node: String,
        workload: String,
        claimed: String,
    },
    #[error(
        "node `{node}`: workload {workload} runs a {expected} (router only for a workload labelled `istio: …gateway`), not a {claimed}"
    )]
    OtherType {
        node: String,
        workload: String,
        expected: &'static str,
        claimed: &'static str,
    },
}

impl BindError {
    /// Whether a registry that has not caught up yet (a Pod just scheduled, a WorkloadEntry
    /// just written) could explain the refusal, so waiting for the next snapshot may help.
    pub fn registry_may_catch_up(&self) -> bool {
        matches!(
            self,
            BindError::UnknownWorkload { .. } | BindError::OtherAddress { .. }
        )
    }
}

fn same_address(node_ip: &str, workload_address: &str) -> bool {
    match (
        node_ip.parse::<std::net::IpAddr>(),
        workload_address.parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        // A WorkloadEntry may carry a DNS name; its bootstrap then names the same string.
        _ => !node_ip.is_empty() && node_ip == workload_address,
    }
}

/// Why a proven identity does not name a workload the registry runs now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "workload {workload} is not in the registry (no WorkloadEntry or running Pod of that name)"
    )]
    Unknown { workload: String },
    #[error(
        "workload {workload} now runs as service account `{current}`; the credential proves `{proven}`"
    )]
    ServiceAccountChanged {
        workload: String,
        proven: String,
        current: String,
    },
}

impl RegistrationError {
    /// Whether a registry that has not caught up yet could explain the refusal.
    pub fn registry_may_catch_up(&self) -> bool {
        matches!(self, RegistrationError::Unknown { .. })
    }
}

/// The registry's workload that `identity` (proven by a credential or a service-account token)
/// names, given `registered`: the registry's workload of that name and namespace, if any. A
/// credential outlives changes to its workload; it speaks only for what still runs under the
/// service account it proves.
pub fn registered_as<'w>(
    identity: &Identity,
    registered: Option<&'w Workload>,
) -> Result<&'w Workload, RegistrationError> {
    let workload = || format!("{}.{}", identity.workload, identity.namespace);
    let Some(w) =
        registered.filter(|w| w.name == identity.workload && w.namespace == identity.namespace)
    else {
        return Err(RegistrationError::Unknown {
            workload: workload(),
        });
    };
    if w.service_account != identity.service_account {
        return Err(RegistrationError::ServiceAccountChanged {
            workload: workload(),
            proven: identity.service_account.clone(),
            current: w.service_account.clone(),
        });
    }
    Ok(w)
}

/// Whether the Envoy node `node_id` may speak for `identity` (proven by the stream's
/// credential), given `registered`: the registry's workload of that identity's name and
/// namespace (a WorkloadEntry in file mode, the Pod in Kubernetes mode), if any. The node must
/// name that workload, carry its address, and run as what it is (router only for a gateway);
/// the workload must still run under the service account the credential proves.
pub fn bind(
    identity: &Identity,
    node_id: &str,
    registered: Option<&Workload>,
) -> Result<Proxy, BindError> {
    let node = NodeId::parse(node_id).map_err(BindError::Malformed)?;
    let workload = format!("{}.{}", identity.workload, identity.namespace);
    if node.workload != identity.workload || node.namespace != identity.namespace {
        return Err(BindError::OtherWorkload {
            node: node_id.to_string(),
            claimed: format!("{}.{}", node.workload, node.namespace),
            proven: workload,
        });
    }
    let w = registered_as(identity, registered).map_err(|e| match e {
        RegistrationError::Unknown { workload } => BindError::UnknownWorkload {
            node: node_id.to_string(),
            workload,
        },
        RegistrationError::ServiceAccountChanged {
            workload,
            proven,
            current,
        } => BindError::ServiceAccountChanged {
            node: node_id.to_string(),
            workload,
            proven,
            current,
        },
    })?;
    if !same_address(&node.ip, &w.address) {
        return Err(BindError::OtherAddress {
            node: node_id.to_string(),
            workload,
            claimed: node.ip,
        });
    }
    let expected = NodeType::of_workload(w);
    if node.node_type != expected {
        return Err(BindError::OtherType {
            node: node_id.to_string(),
            workload,
            expected: expected.as_str(),
            claimed: node.node_type.as_str(),
        });
    }
    Ok(Proxy {
        id: node_id.to_string(),
        node_type: node.node_type,
        ip: Some(node.ip),
        identity: identity.clone(),
        // The stream adds what the node says of itself, once bound.
        metadata: NodeMetadata::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip() {
        let id = NodeId::format(
            NodeType::Sidecar,
            "10.44.0.17",
            "billing-v1",
            "voicecore-ai",
        );
        let n = NodeId::parse(&id).unwrap();
        assert_eq!(n.workload, "billing-v1");
        assert_eq!(n.namespace, "voicecore-ai");
        assert_eq!(n.node_type, NodeType::Sidecar);
        assert!(NodeId::parse("garbage").is_err());
        assert!(NodeId::parse("proxy~1~a.b~c").is_err());
    }

    #[test]
    fn node_ids_name_their_namespace_in_the_suffix_and_stay_short() {
        for bad in [
            "sidecar~10.0.0.1~a.ns~other.svc.cluster.local",
            "sidecar~10.0.0.1~a.ns~ns.svc.",
            "sidecar~10.0.0.1~a.ns~ns.svc.cluster..local",
            "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local~extra",
            "sidecar~10.0.0.1~.ns~ns.svc.cluster.local",
            "sidecar~10.0.0.1~a.~.svc.cluster.local",
            "sidecar~10.0.0.1~a.ns~ns.svc.x y",
        ] {
            assert!(NodeId::parse(bad).is_err(), "{bad}");
        }
        let long = format!(
            "sidecar~10.0.0.1~{}.ns~ns.svc.cluster.local",
            "a".repeat(MAX_NODE_ID_LEN)
        );
        assert!(NodeId::parse(&long).unwrap_err().contains("longer"));
        // a workload name may itself hold dots (Pod names are DNS subdomains)
        let n = NodeId::parse("sidecar~10.0.0.1~web.v1.ns~ns.svc.example.org").unwrap();
        assert_eq!(
            (n.workload.as_str(), n.namespace.as_str()),
            ("web.v1", "ns")
        );
    }

    fn identity(workload: &str, sa: &str) -> Identity {
        Identity {
            workload: workload.into(),
            namespace: "ns".into(),
            service_account: sa.into(),
            trust_domain: "cluster.local".into(),
        }
    }

    fn workload(name: &str, address: &str, sa: &str, gateway: bool) -> Workload {
        Workload {
            name: name.into(),
            namespace: "ns".into(),
            address: address.into(),
            labels: if gateway {
                [("istio".to_string(), "ingressgateway".to_string())].into()
            } else {
                [("app".to_string(), name.to_string())].into()
            },
            service_account: sa.into(),
            ports: Default::default(),
            locality: String::new(),
        }
    }

    #[test]
    fn a_node_binds_only_to_the_registered_workload_of_its_identity() {
        let billing = workload("billing", "10.0.0.1", "billing", false);
        let gw = workload("gw", "10.0.0.9", "gw", true);
        let v6 = workload("billing", "fd00::1", "billing", false);
        type Want = Result<(), fn(&BindError) -> bool>;
        let cases: Vec<(&str, Identity, &str, Option<&Workload>, Want)> = vec![
            (
                "its own workload",
                identity("billing", "billing"),
                "sidecar~10.0.0.1~billing.ns~ns.svc.cluster.local",
                Some(&billing),
                Ok(()),
            ),
            (
                "an IPv6 address written another way",
                identity("billing", "billing"),
                "sidecar~fd00:0::1~billing.ns~ns.svc.cluster.local",
                Some(&v6),
                Ok(()),
            ),
            (
                "a gateway as a router",
                identity("gw", "gw"),
                "router~10.0.0.9~gw.ns~ns.svc.cluster.local",
                Some(&gw),
                Ok(()),
            ),
            (
                "another workload's node id",
                identity("low-priv", "low-priv"),
                "sidecar~10.0.0.1~billing.ns~ns.svc.cluster.local",
                Some(&billing),
                Err(|e| matches!(e, BindError::OtherWorkload { .. })),
            ),
            (
                "a workload gone from the registry",
                identity("billing", "billing"),
                "sidecar~10.0.0.1~billing.ns~ns.svc.cluster.local",
                None,
                Err(|e| {
                    matches!(e, BindError::UnknownWorkload { .. }) && e.registry_may_catch_up()
                }),
            ),
            (
                "a registry view of another workload",
                identity("billing", "billing"),
                "sidecar~10.0.0.9~billing.ns~ns.svc.cluster.local",
                Some(&gw),
                Err(|e| matches!(e, BindError::UnknownWorkload { .. })),
            ),
            (
                "a stale credential: the workload now runs as another account",
                identity("billing", "low-priv"),
                "sidecar~10.0.0.1~billing.ns~ns.svc.cluster.local",
                Some(&billing),
                Err(|e| {
                    matches!(e, BindError::ServiceAccountChanged { .. })
                        && !e.registry_may_catch_up()
                }),
            ),
            (
                "an IP that is not the workload's",
                identity("billing", "billing"),
                "sidecar~10.0.0.2~billing.ns~ns.svc.cluster.local",
                Some(&billing),
                Err(|e| matches!(e, BindError::OtherAddress { .. })),
            ),
            (
                "an empty IP",
                identity("billing", "billing"),
                "sidecar~~billing.ns~ns.svc.cluster.local",
                Some(&billing),
                Err(|e| matches!(e, BindError::OtherAddress { .. })),
            ),
            (
                "a sidecar claiming router",
                identity("billing", "billing"),
                "router~10.0.0.1~billing.ns~ns.svc.cluster.local",
                Some(&billing),
                Err(|e| matches!(e, BindError::OtherType { .. }) && !e.registry_may_catch_up()),
            ),
            (
                "a gateway claiming sidecar",
                identity("gw", "gw"),
                "sidecar~10.0.0.9~gw.ns~ns.svc.cluster.local",
                Some(&gw),
                Err(|e| matches!(e, BindError::OtherType { .. })),
            ),
            (
                "a malformed node id",
                identity("billing", "billing"),
                "billing",
                Some(&billing),
                Err(|e| matches!(e, BindError::Malformed(_))),
            ),
        ];
        for (what, id, node, registered, want) in cases {
            let got = bind(&id, node, registered);
            match (want, got) {
                (Ok(()), Ok(p)) => {
                    assert_eq!(p.id, node, "{what}");
                    assert_eq!(p.identity, id, "{what}");
                }
                (Err(pred), Err(e)) => assert!(pred(&e), "{what}: {e:?}"),
                (want, got) => panic!("{what}: want {:?}, got {got:?}", want.is_ok()),
            }
        }
    }
}
