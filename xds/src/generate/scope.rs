//! A sidecar's outbound view of the mesh, built once per scope (namespace, Sidecar, the
//! DestinationRules with a `workloadSelector` selecting it and, when routes match on them,
//! labels) and shared by every proxy in it: which services it sees, their clusters, listeners
//! and routes, and the encoded virtual hosts scopes share.

use super::egress::Egress;
use super::listener::OutboundAddress;
use super::locality::LocalityPlans;
use super::selected::{ClusterMaps, RulesKey, SelectedRules};
use super::{MeshSnapshot, cluster, cluster_port, common, get_or_build, l4, listener, route};
use crate::resource::{Layer, LayerMap, Resource, SharedResource, reuse_layer};
use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use meshd_model::networking::{DestinationRule, Sidecar};
use meshd_model::registry::Service;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a proxy may see of the mesh's services (Sidecar egress scoping).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ScopeKey {
    pub(super) namespace: String,
    pub(super) sidecar: Option<String>,
    /// Only when some route matches on `sourceLabels`.
    pub(super) labels: Option<meshd_model::networking::Labels>,
    /// The client side of the Telemetry policy in force (outbound listeners carry it).
    pub(super) telemetry: meshd_model::telemetry_scope::SideTelemetry,
    /// The DestinationRules with a `workloadSelector` selecting the proxy (usually none).
    pub(super) rules: RulesKey,
}

/// What a sidecar's outbound virtual host for a service port is built from besides the snapshot:
/// scopes agreeing on it share the encoded virtual host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct VhostKey {
    pub(super) host: String,
    pub(super) port: u32,
    /// The proxy is in the service's namespace (short names are among the domains).
    pub(super) local: bool,
    /// Only when routes depend on the proxy's namespace (`Index::routes_see_namespace`).
    pub(super) namespace: Option<String>,
    /// Only when some route matches on `sourceLabels`.
    pub(super) labels: Option<meshd_model::networking::Labels>,
    /// The DestinationRules with a `workloadSelector` selecting the proxy (hash policies).
    pub(super) rules: RulesKey,
}

/// Outbound resources for every proxy in one scope.
pub(super) struct Scope {
    pub(super) clusters: Layer,
    pub(super) endpoints: Layer,
    pub(super) listeners: Layer,
    pub(super) routes: Layer,
    /// Clusters of `endpoints` whose assignment depends on the proxy's locality.
    pub(super) locality: Arc<LocalityPlans>,
    /// SDS secrets of the client credentials the clusters name (rules selecting the proxy).
    pub(super) secrets: Layer,
}

/// Hosts no service claims: to `unmatched` (passthrough or the Sidecar's egress proxy), or
/// refused with 502 under REGISTRY_ONLY.
pub(super) fn catch_all_vhost(unmatched: &str) -> VirtualHost {
    use envoy_types::pb::envoy::config::route::v3::{
        DirectResponseAction, Route, RouteAction, route, route_action,
    };
    let allow_any = unmatched != cluster::BLACKHOLE;
    let action = if allow_any {
        route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(unmatched.into())),
            timeout: Some(common::duration(std::time::Duration::ZERO)),
            ..Default::default()
        })
    } else {
        route::Action::DirectResponse(DirectResponseAction {
            status: 502,
            ..Default::default()
        })
    };
    VirtualHost {
        name: if allow_any { "allow_any" } else { "block_all" }.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: if allow_any { "allow_any" } else { "block_all" }.into(),
            r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
                path_specifier: Some(
                    envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                        "/".into(),
                    ),
                ),
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl MeshSnapshot {
    pub(super) fn scope(
        &self,
        namespace: &str,
        labels: &meshd_model::networking::Labels,
    ) -> Arc<Scope> {
        let sidecar = self.index.sidecar_for(namespace, labels);
        let rules = self.index.selected_rules(namespace, labels);
        let key = ScopeKey {
            namespace: namespace.to_string(),
            sidecar: sidecar.map(|(o, _)| o.key().to_string()),
            labels: self.index.uses_source_labels.then(|| labels.clone()),
            telemetry: self.telemetry_for(namespace, labels).client,
            rules: rules.key(),
        };
        get_or_build(&self.scopes, key, |key| {
            let scope = self.build_scope(
                namespace,
                key.labels.as_ref(),
                sidecar.map(|(o, s)| (o.meta.namespace(), s)),
                &key.telemetry,
                &rules,
            );
            let Some(old) = self.previous.scopes.get(key) else {
                return Arc::new(scope);
            };
            Arc::new(Scope {
                clusters: reuse_layer(Some(&old.clusters), scope.clusters),
                endpoints: reuse_layer(Some(&old.endpoints), scope.endpoints),
                listeners: reuse_layer(Some(&old.listeners), scope.listeners),
                routes: reuse_layer(Some(&old.routes), scope.routes),
                secrets: reuse_layer(Some(&old.secrets), scope.secrets),
                locality: scope.locality,
            })
        })
    }

    pub(super) fn build_scope(
        &self,
        namespace: &str,
        labels: Option<&meshd_model::networking::Labels>,
        sidecar: Option<(&str, &Sidecar)>,
        telemetry: &meshd_model::telemetry_scope::SideTelemetry,
        rules: &SelectedRules,
    ) -> Scope {
        let opts = &self.with_telemetry(meshd_model::telemetry_scope::TelemetryPolicy {
            client: telemetry.clone(),
            server: Default::default(),
        });
        let restricted = self.index.restricted();
        let egress = Egress::new(sidecar, namespace);
        let egress_allows = |svc: &Service, port: u32| egress.allows(svc, port);
        let mut port_hidden = false;
        let visible: Vec<&Service> = self
            .index
            .services()
            .filter(|svc| !restricted || svc.visible_in(namespace))
            .filter(|svc| {
                let shown = svc
                    .ports
                    .iter()
                    .filter(|p| egress_allows(svc, p.number))
                    .count();
                port_hidden |= shown > 0 && shown < svc.ports.len();
                shown > 0
            })
            .collect();
        let port_visible = |svc: &Service, port: u32| egress_allows(svc, port);
        let unmatched = egress.unmatched(&self.index.domain_suffix);
        // Services whose DestinationRule differs in this scope (`exportTo`, a `workloadSelector`):
        // their clusters are generated for it rather than taken from the mesh-wide layer.
        let own_rule: Vec<(&Service, Option<&DestinationRule>)> = if restricted || !rules.is_empty()
        {
            visible
                .iter()
                .filter_map(|svc| {
                    let here = self.index.rule_for(&svc.hostname, namespace, rules);
                    let everywhere = self.index.destination_rule(&svc.hostname);
                    let same = match (here, everywhere) {
                        (None, None) => true,
                        (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
                        _ => false,
                    };
                    (!same).then_some((*svc, here))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut locality = self.locality_plans.clone();
        let mut credentials = super::credential::CredentialWants::new();
        let (clusters, endpoints) = if own_rule.is_empty()
            && !port_hidden
            && visible.len() == self.index.services().count()
        {
            // Unscoped: the mesh-wide layers themselves, shared with every other such scope.
            (self.clusters.clone(), self.endpoints.clone())
        } else {
            let mut clusters = BTreeMap::new();
            let mut endpoints = BTreeMap::new();
            for svc in &visible {
                for name in self
                    .clusters_by_host
                    .get(&svc.hostname)
                    .into_iter()
                    .flatten()
                    .filter(|n| cluster_port(n).is_none_or(|port| port_visible(svc, port)))
                {
                    clusters.insert(name.clone(), self.clusters[name].clone());
                    if let Some(e) = self.endpoints.get(name) {
                        endpoints.insert(name.clone(), e.clone());
                    }
                }
            }
            for name in [
                cluster::PASSTHROUGH,
                cluster::BLACKHOLE,
                cluster::ZIPKIN,
                cluster::OPENTELEMETRY,
                &unmatched,
            ]
            .into_iter()
            .filter(|n| self.clusters.contains_key(*n))
            {
                clusters.insert(name.to_string(), self.clusters[name].clone());
                if let Some(e) = self.endpoints.get(name) {
                    endpoints.insert(name.to_string(), e.clone());
                }
            }
            let maps = ClusterMaps {
                clusters: &mut clusters,
                endpoints: &mut endpoints,
                locality: &mut locality,
            };
            credentials = self.clusters_under(maps, (&own_rule, false), &port_visible, opts);
            (LayerMap::new(clusters), LayerMap::new(endpoints))
        };
        // Ports: HTTP services share a listener and a route table per port.
        let mut http_ports: BTreeMap<u32, Vec<&Service>> = BTreeMap::new();
        let mut tcp_ports: BTreeMap<u32, Vec<l4::L4Chain>> = BTreeMap::new();
        for svc in &visible {
            for port in svc
                .ports
                .iter()
                .filter(|p| egress.captured_allows(svc, p.number))
            {
                if port.protocol.is_http() {
                    http_ports.entry(port.number).or_default().push(svc);
                } else {
                    tcp_ports.entry(port.number).or_default().extend(l4::chains(
                        &self.index,
                        (namespace, labels),
                        rules,
                        svc,
                        port,
                    ));
                }
            }
        }
        let mut listeners = BTreeMap::new();
        let vo = listener::virtual_outbound(&unmatched);
        listeners.insert(vo.name.clone(), Resource::encode(vo.name.clone(), &vo));
        let ports: BTreeSet<u32> = http_ports.keys().chain(tcp_ports.keys()).copied().collect();
        for port in ports {
            let tcp = tcp_ports.get(&port).map(Vec::as_slice).unwrap_or(&[]);
            let l = listener::outbound_port(
                (port, OutboundAddress::CAPTURED),
                http_ports.contains_key(&port),
                tcp,
                &unmatched,
                opts,
            );
            listeners.insert(l.name.clone(), Resource::encode(l.name.clone(), &l));
        }
        let mut routes = BTreeMap::new();
        for (port, services) in &http_ports {
            let services: Vec<(&Service, u32)> = services.iter().map(|s| (*s, *port)).collect();
            let name = OutboundAddress::CAPTURED.route_name(*port);
            let rc = self.outbound_routes(name, (namespace, labels), rules, &services, &unmatched);
            routes.insert(rc.name.clone(), rc);
        }
        let source = (namespace, labels);
        for (l, rc) in self.bound_egress(&egress, &visible, source, rules, &unmatched, opts) {
            listeners.insert(l.name.clone(), l);
            if let Some(rc) = rc {
                routes.insert(rc.name.clone(), rc);
            }
        }
        Scope {
            clusters,
            endpoints,
            listeners: LayerMap::new(listeners),
            routes: LayerMap::new(routes),
            locality,
            secrets: LayerMap::new(super::credential::secrets(
                &self.index.config,
                namespace,
                &credentials,
            )),
        }
    }

    /// `source`: the proxy's namespace and, when some route matches on them, labels.
    /// `services`: each with the port its virtual host answers for.
    pub(super) fn outbound_routes(
        &self,
        name: String,
        (namespace, labels): (&str, Option<&meshd_model::networking::Labels>),
        rules: &SelectedRules,
        services: &[(&Service, u32)],
        unmatched: &str,
    ) -> SharedResource {
        let mut vhosts: Vec<Bytes> = Vec::with_capacity(services.len() + 1);
        let mut seen_domains = BTreeSet::new();
        for &(svc, port) in services {
            let local = svc.namespace == namespace;
            let mut domains = self.vhost_domains(svc, port, local);
            let all = domains.len();
            domains.retain(|d| seen_domains.insert(d.clone()));
            if domains.is_empty() {
                continue;
            }
            let build =
                |domains| self.outbound_vhost(svc, port, (namespace, labels), rules, domains);
            if domains.len() < all {
                // A domain another service claimed first: this one is particular to the scope.
                vhosts.push(build(domains).encode_to_vec().into());
                continue;
            }
            let key = VhostKey {
                host: svc.hostname.clone(),
                port,
                local,
                namespace: self
                    .index
                    .routes_see_namespace
                    .then(|| namespace.to_string()),
                labels: labels.cloned(),
                rules: rules.key(),
            };
            let memo = self.vhosts.lock().expect("vhost memo").get(&key).cloned();
            let vhost = memo.unwrap_or_else(|| {
                let encoded: Bytes = build(domains).encode_to_vec().into();
                self.vhosts
                    .lock()
                    .expect("vhost memo")
                    .insert(key, encoded.clone());
                encoded
            });
            vhosts.push(vhost);
        }
        vhosts.push(catch_all_vhost(unmatched).encode_to_vec().into());
        let validate_clusters = common::boolv(false);
        // The table's encoding is its fields in number order: the name, the virtual hosts
        // (field 2, each as encoded once), then validate_clusters.
        let head = RouteConfiguration {
            name: name.clone(),
            ..Default::default()
        };
        let tail = RouteConfiguration {
            validate_clusters,
            ..Default::default()
        };
        let mut value = head.encode_to_vec();
        for v in &vhosts {
            prost::encoding::bytes::encode(2, v, &mut value);
        }
        tail.encode(&mut value).expect("a Vec grows");
        Resource::from_value::<RouteConfiguration>(name, value)
    }

    /// A service's names on `port` as a sidecar's route table matches them: its host, its
    /// short names for proxies in its namespace, its addresses; each with and without the port.
    pub(super) fn vhost_domains(&self, svc: &Service, port: u32, local: bool) -> Vec<String> {
        let mut domains = vec![svc.hostname.clone(), format!("{}:{port}", svc.hostname)];
        if local
            && let Some(short) = svc.hostname.strip_suffix(&format!(
                ".{}.svc.{}",
                svc.namespace, self.index.domain_suffix
            ))
        {
            for d in [
                short.to_string(),
                format!("{short}.{}", svc.namespace),
                format!("{short}.{}.svc", svc.namespace),
            ] {
                domains.push(format!("{d}:{port}"));
                domains.push(d);
            }
        }
        for vip in &svc.addresses {
            if !vip.contains('/') {
                domains.push(vip.clone());
                domains.push(format!("{vip}:{port}"));
            }
        }
        domains
    }

    pub(super) fn outbound_vhost(
        &self,
        svc: &Service,
        port: u32,
        (namespace, labels): (&str, Option<&meshd_model::networking::Labels>),
        rules: &SelectedRules,
        domains: Vec<String>,
    ) -> VirtualHost {
        let vs = self.index.mesh_virtual_services(&svc.hostname, namespace);
        let routes = match vs.into_iter().next() {
            Some((vs_ns, vs)) => {
                let ctx = route::RouteCtx {
                    index: &self.index,
                    listener_port: port,
                    namespace: vs_ns,
                    gateway: None,
                    source: Some((namespace, labels)),
                    rules,
                };
                route::http_routes(&ctx, &vs.http)
            }
            None => vec![route::default_route(cluster::outbound_name(
                port,
                "",
                &svc.hostname,
            ))],
        };
        VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains,
            routes,
            ..Default::default()
        }
    }
}
