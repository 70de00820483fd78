//! A Service and its endpoints, from the Service, its EndpointSlices (else core Endpoints, else
//! its selected ready Pods) and the Pods behind them; Pods as workloads.

use super::{EXPORT_TO_ANNOTATION, IndexOptions, KubeObjects};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshd_model::networking::{Labels, Location, Resolution};
use meshd_model::registry::{self, Endpoint, Port, Protocol, Workload, selector_matches};
use std::collections::BTreeMap;

/// A Kubernetes port number (an `i32` in the API) when it is one, 1-65535: a negative number
/// cast `as u32` became a port past 4 billion that every proxy would refuse.
pub(super) fn port_number(n: i32) -> Option<u32> {
    u16::try_from(n).ok().filter(|p| *p > 0).map(u32::from)
}

/// Kubernetes' standard `appProtocol` values, in Istio's protocol names.
pub(super) fn app_protocol(p: &str) -> &str {
    match p {
        "kubernetes.io/h2c" => "http2",
        "kubernetes.io/ws" => "http",
        "kubernetes.io/wss" => "https",
        other => other,
    }
}

/// Pods by name and by IP, for joining endpoints.
pub(super) struct PodIndex<'a> {
    pub(super) by_ip: BTreeMap<(&'a str, &'a str), &'a Pod>,
    pub(super) objs: &'a KubeObjects,
}

impl<'a> PodIndex<'a> {
    pub(super) fn new(objs: &'a KubeObjects) -> Self {
        let mut by_ip = BTreeMap::new();
        for ((ns, _), pod) in &objs.pods {
            if pod_terminated(pod) {
                continue;
            }
            for ip in pod_ips(pod) {
                by_ip.insert((ns.as_str(), ip), &**pod);
            }
        }
        PodIndex { by_ip, objs }
    }

    pub(super) fn find(
        &self,
        namespace: &str,
        target: Option<&k8s_openapi::api::core::v1::ObjectReference>,
        address: &str,
    ) -> Option<&'a Pod> {
        if let Some(t) = target
            && t.kind.as_deref() == Some("Pod")
            && let Some(name) = &t.name
        {
            let ns = t.namespace.clone().unwrap_or_else(|| namespace.to_string());
            if let Some(p) = self.objs.pods.get(&(ns, name.clone())) {
                return Some(p);
            }
        }
        self.by_ip.get(&(namespace, address)).copied()
    }
}

pub(super) fn labels_of(pod: &Pod) -> Labels {
    pod.metadata
        .labels
        .as_ref()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

pub(super) fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

pub(super) fn pod_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub(super) fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
}

pub(super) fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(st) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<&str> = st.pod_ips.iter().flatten().map(|p| p.ip.as_str()).collect();
    if let Some(ip) = st.pod_ip.as_deref() {
        ips.push(ip);
    }
    ips.retain(|ip| !ip.is_empty());
    ips.dedup();
    ips
}

/// The Pod's `Ready` condition is `True` (and it has not terminated).
pub fn pod_ready(pod: &Pod) -> bool {
    !pod_terminated(pod)
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(super) fn container_port(pod: &Pod, name: &str) -> Option<u32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| port_number(p.container_port))
}

/// A Pod that can run a sidecar: it has an address and has not terminated.
pub(super) fn workload(pod: &Pod) -> Option<Workload> {
    if pod_terminated(pod) {
        return None;
    }
    let address = pod_ip(pod)?;
    let ports = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, port_number(p.container_port)?)))
        .collect();
    let labels = labels_of(pod);
    Some(Workload {
        name: pod.metadata.name.clone()?,
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        address,
        // meshd does not watch Nodes: a Pod's locality comes from its own labels.
        locality: meshd_model::locality::locality_of(None, &labels),
        labels,
        service_account: service_account_of(pod),
        ports,
    })
}

impl KubeObjects {
    pub(super) fn service(
        &self,
        svc: &Service,
        pods: &PodIndex<'_>,
        slices_by_service: &BTreeMap<(&str, &str), Vec<&EndpointSlice>>,
        opts: &IndexOptions,
    ) -> Option<registry::Service> {
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        // Istio's annotation: the Service's exportTo, comma-separated.
        let export_to: Vec<String> = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let name = svc.metadata.name.clone()?;
        let spec = svc.spec.as_ref()?;
        let hostname = format!("{name}.{namespace}.svc.{}", opts.domain_suffix);
        let service_ports: Vec<&ServicePort> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .collect();
        let ports: Vec<Port> = service_ports
            .iter()
            .filter_map(|p| {
                let port_name = p.name.clone().unwrap_or_default();
                let number = port_number(p.port)?;
                Some(Port {
                    protocol: Protocol::detect(
                        p.app_protocol.as_deref().map(app_protocol),
                        &port_name,
                    ),
                    name: port_name,
                    number,
                    target_port: match &p.target_port {
                        None => Some(number),
                        Some(IntOrString::Int(n)) => Some(port_number(*n)?),
                        // Named: resolved per endpoint (each Pod may number it differently).
                        Some(IntOrString::String(_)) => None,
                    },
                })
            })
            .collect();
        let selector: Option<Labels> = spec
            .selector
            .clone()
            .filter(|s| !s.is_empty())
            .map(|s| s.into_iter().collect());
        let new_endpoint =
            |address: String, ports: meshd_model::networking::NamedPorts, pod: Option<&Pod>| {
                let (labels, service_account, workload) = match pod {
                    Some(p) => (labels_of(p), service_account_of(p), p.metadata.name.clone()),
                    None => (Labels::new(), "default".to_string(), None),
                };
                Endpoint {
                    locality: meshd_model::locality::locality_of(None, &labels),
                    address,
                    ports,
                    labels,
                    service_account,
                    namespace: namespace.clone(),
                    workload,
                    weight: None,
                }
            };

        if spec.type_.as_deref() == Some("ExternalName") {
            let external = spec.external_name.clone()?;
            return Some(registry::Service {
                hostname,
                namespace: namespace.clone(),
                addresses: Vec::new(),
                ports,
                resolution: Resolution::Dns,
                location: Location::MeshExternal,
                endpoints: vec![new_endpoint(external, Default::default(), None)],
                subject_alt_names: Vec::new(),
                selector: None,
                export_to,
            });
        }

        let headless = spec.cluster_ip.as_deref() == Some("None");
        let addresses: Vec<String> = if headless {
            Vec::new()
        } else {
            match (&spec.cluster_ips, &spec.cluster_ip) {
                (Some(ips), _) if !ips.is_empty() => ips.clone(),
                (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
                _ => Vec::new(),
            }
        };

        let slices: &[&EndpointSlice] = slices_by_service
            .get(&(namespace.as_str(), name.as_str()))
            .map_or(&[], |v| v.as_slice());
        let mut endpoints: Vec<Endpoint> = Vec::new();
        if !slices.is_empty() {
            for slice in slices {
                if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                    continue;
                }
                let ports: meshd_model::networking::NamedPorts = slice
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .filter_map(|p| {
                        Some((p.name.clone().unwrap_or_default(), port_number(p.port?)?))
                    })
                    .collect();
                for ep in &slice.endpoints {
                    // `ready` unset means ready (the API's rule).
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for address in &ep.addresses {
                        let pod = pods.find(&namespace, ep.target_ref.as_ref(), address);
                        endpoints.push(new_endpoint(address.clone(), ports.clone(), pod));
                    }
                }
            }
        } else if let Some(eps) = self.endpoints.get(&(namespace.clone(), name.clone())) {
            for subset in eps.subsets.iter().flatten() {
                let ports: meshd_model::networking::NamedPorts = subset
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .filter_map(|p| {
                        Some((p.name.clone().unwrap_or_default(), port_number(p.port)?))
                    })
                    .collect();
                // `notReadyAddresses` are not served.
                for a in subset.addresses.iter().flatten() {
                    let pod = pods.find(&namespace, a.target_ref.as_ref(), &a.ip);
                    endpoints.push(new_endpoint(a.ip.clone(), ports.clone(), pod));
                }
            }
        } else if let Some(sel) = &selector {
            // No endpoints controller has spoken for this Service (yet): its ready Pods.
            for pod in self
                .pods
                .range((namespace.clone(), String::new())..)
                .take_while(|((ns, _), _)| *ns == namespace)
                .map(|(_, p)| &**p)
                .filter(|p| pod_ready(p) && selector_matches(sel, &labels_of(p)))
            {
                let Some(ip) = pod_ip(pod) else { continue };
                let ports: meshd_model::networking::NamedPorts = service_ports
                    .iter()
                    .filter_map(|sp| {
                        let number = match &sp.target_port {
                            None => port_number(sp.port)?,
                            Some(IntOrString::Int(n)) => port_number(*n)?,
                            Some(IntOrString::String(named)) => container_port(pod, named)?,
                        };
                        Some((sp.name.clone().unwrap_or_default(), number))
                    })
                    .collect();
                endpoints.push(new_endpoint(ip, ports, Some(pod)));
            }
        }
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints.dedup_by(|a, b| a.address == b.address && a.ports == b.ports);

        Some(registry::Service {
            hostname,
            namespace: namespace.clone(),
            addresses,
            ports,
            resolution: if headless {
                Resolution::None
            } else {
                Resolution::Static
            },
            location: Location::MeshInternal,
            endpoints,
            subject_alt_names: Vec::new(),
            selector,
            export_to,
        })
    }
}
