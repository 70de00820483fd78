//! Who is on the other end of a stream: the authenticated identity and what its Envoy node says.

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
}

impl Proxy {
    /// The proxy a workload runs, as its Envoy would present itself: a gateway (label
    /// `istio: …gateway`) in router mode, any other a sidecar.
    pub fn for_workload(w: &meshd_model::registry::Workload, trust_domain: &str) -> Proxy {
        let gateway = w
            .labels
            .get("istio")
            .is_some_and(|v| v.ends_with("gateway"));
        let node_type = if gateway {
            NodeType::Router
        } else {
            NodeType::Sidecar
        };
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

impl NodeId {
    /// Istio's node id layout: `TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN`.
    pub fn parse(id: &str) -> Result<NodeId, String> {
        let parts: Vec<&str> = id.split('~').collect();
        let [ty, ip, pod, _domain] = parts.as_slice() else {
            return Err(format!(
                "node id `{id}` is not TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN"
            ));
        };
        let node_type = match *ty {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => return Err(format!("node id `{id}`: unknown proxy type `{other}`")),
        };
        let (workload, namespace) = pod
            .rsplit_once('.')
            .ok_or_else(|| format!("node id `{id}`: `{pod}` is not NAME.NAMESPACE"))?;
        Ok(NodeId {
            node_type,
            ip: ip.to_string(),
            workload: workload.to_string(),
            namespace: namespace.to_string(),
        })
    }

    pub fn format(node_type: NodeType, ip: &str, workload: &str, namespace: &str) -> String {
        let ty = match node_type {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        };
        format!("{ty}~{ip}~{workload}.{namespace}~{namespace}.svc.cluster.local")
    }
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
}
