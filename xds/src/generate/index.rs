//! The index over the accepted config a snapshot is built from: services, DestinationRules
//! (fragments merged as Istio merges them, once per snapshot), mesh routes,
//! PeerAuthentications and Sidecars by the keys the builders look them up by.

use super::selected::SelectedRules;
use super::{GenOptions, cluster};
use meshd_model::mesh::qualify_host;
use meshd_model::networking::merge::{MergeKey, merge};
use meshd_model::networking::{DestinationRule, Labels, Sidecar, Subset, VirtualService};
use meshd_model::registry::{Endpoint, Port, Service, Workload, selector_matches};
use meshd_model::security::{MtlsMode, PeerAuthentication};
use meshd_model::{ConfigObject, MeshConfig, SpecRef};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A DestinationRule as proxies apply it: one object, or the fragments Istio merges into one
/// (`meshd_model::networking::merge`), built once per snapshot and shared by every proxy.
#[derive(Clone, Debug)]
pub struct RuleRef(Rule);

#[derive(Clone, Debug)]
enum Rule {
    One(SpecRef<DestinationRule>),
    Merged(Arc<DestinationRule>),
}

impl RuleRef {
    /// `fragments` in merge order, at least one.
    fn of(fragments: &[SpecRef<DestinationRule>]) -> RuleRef {
        match fragments {
            [one] => RuleRef(Rule::One(one.clone())),
            _ => {
                let specs: Vec<&DestinationRule> = fragments.iter().map(|f| &**f).collect();
                RuleRef(Rule::Merged(Arc::new(merge(&specs).0)))
            }
        }
    }
}

impl std::ops::Deref for RuleRef {
    type Target = DestinationRule;
    fn deref(&self) -> &DestinationRule {
        match &self.0 {
            Rule::One(r) => r,
            Rule::Merged(r) => r,
        }
    }
}

/// Lookups over the accepted config.
pub struct Index {
    pub domain_suffix: String,
    pub root_namespace: String,
    /// Positions in `config.services`, by host (the last of a duplicated host).
    pub(super) services: BTreeMap<String, usize>,
    pub(super) destination_rules: BTreeMap<String, RuleRef>,
    /// Every DestinationRule of a host without a `workloadSelector`, with its namespace: the
    /// fragments of one namespace with the same `exportTo` merged into one, in the order of
    /// their first fragment's name.
    pub(super) dr_candidates: BTreeMap<String, Vec<(String, RuleRef)>>,
    /// The DestinationRules with a `workloadSelector`, by the one namespace they apply in, each
    /// with its qualified host, in name order (see `selected_rules`).
    pub(super) dr_selected: HashMap<String, Vec<(String, SpecRef<DestinationRule>)>>,
    /// See `restricted()`.
    pub(super) restricted: bool,
    /// VirtualServices for sidecars (bound to `mesh`), by qualified host.
    pub(super) mesh_routes: BTreeMap<String, Vec<(String, SpecRef<VirtualService>)>>,
    pub(super) peer_authn: Vec<(String, PeerAuthentication)>,
    pub(super) sidecars: Vec<(ConfigObject, Sidecar)>,
    /// Some mesh route matches on `sourceLabels`: outbound routes then depend on the proxy's
    /// labels, not only on its namespace and Sidecar.
    pub(super) uses_source_labels: bool,
    /// A sidecar's outbound routes for a host depend on the proxy's namespace: some `exportTo`
    /// narrows what it sees, or some mesh route matches on `sourceNamespace`.
    pub(super) routes_see_namespace: bool,
    /// Workloads by (namespace, name): a proxy's is looked up on every push.
    pub(super) workloads: HashMap<(String, String), usize>,
    /// Telemetry objects in force, in (namespace, name) order; see `meshd_model::telemetry_scope`.
    pub(super) telemetries: Vec<Arc<meshd_model::ConfigObject>>,
    /// Telemetry objects the server's options cannot serve (a provider with no collector).
    pub(super) telemetries_refused: Vec<meshd_model::Rejected>,
    /// CUSTOM AuthorizationPolicies the server cannot call a provider for (they fail closed).
    pub(super) authz_refused: Vec<meshd_model::Rejected>,
    pub(crate) config: Arc<MeshConfig>,
}

impl Index {
    pub fn new(config: Arc<MeshConfig>, opts: &GenOptions) -> Index {
        let suffix = opts.domain_suffix.clone();
        let services: BTreeMap<String, usize> = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.hostname.clone(), i))
            .collect();
        // Fragments by what they merge on, in first-seen order: objects come in (namespace,
        // name) order, Istio's order of fragments with creation time left out.
        let mut fragments: Vec<(MergeKey, Vec<SpecRef<DestinationRule>>)> = Vec::new();
        let mut fragment_of: HashMap<MergeKey, usize> = HashMap::new();
        let mut dr_selected: HashMap<String, Vec<(String, SpecRef<DestinationRule>)>> =
            HashMap::new();
        for dr in config.shared::<DestinationRule>() {
            let ns = dr.object().meta.namespace();
            let host = qualify_host(&dr.host, ns, &suffix);
            let Some(key) = MergeKey::of(&dr, ns, host.clone()) else {
                // Selectors do not cross namespaces: as Istio, such a rule is private to its
                // namespace whatever its `exportTo` says.
                dr_selected
                    .entry(ns.to_string())
                    .or_default()
                    .push((host, dr));
                continue;
            };
            match fragment_of.get(&key) {
                Some(&i) => fragments[i].1.push(dr),
                None => {
                    fragment_of.insert(key.clone(), fragments.len());
                    fragments.push((key, vec![dr]));
                }
            }
        }
        let mut dr_candidates: BTreeMap<String, Vec<(String, RuleRef)>> = BTreeMap::new();
        for (key, group) in fragments {
            dr_candidates
                .entry(key.host)
                .or_default()
                .push((key.namespace, RuleRef::of(&group)));
        }
        let narrow = |e: &[String]| !e.is_empty() && !e.iter().any(|e| e == "*");
        let restricted = dr_candidates
            .values()
            .flatten()
            .any(|(_, dr)| narrow(&dr.export_to))
            || config
                .virtual_services()
                .any(|(_, vs)| narrow(&vs.export_to))
            || config.services.iter().any(|s| narrow(&s.export_to))
            // Rules for one host that were not merged (other namespaces): which applies
            // depends on the proxy's namespace.
            || dr_candidates.values().any(|rules| rules.len() > 1)
            // A rule outside its service's and the root namespace applies to the proxies of
            // its own namespace only.
            || dr_candidates.iter().any(|(host, rules)| {
                let service_ns = services.get(host).map(|i| config.services[*i].namespace.as_str());
                rules.iter().any(|(ns, _)| {
                    *ns != opts.root_namespace && Some(ns.as_str()) != service_ns
                })
            });
        let mut mesh_routes: BTreeMap<String, Vec<(String, SpecRef<VirtualService>)>> =
            BTreeMap::new();
        for vs in config.shared::<VirtualService>() {
            let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
            if !for_mesh {
                continue;
            }
            let ns = vs.object().meta.namespace();
            for h in &vs.hosts {
                let host = qualify_host(h, ns, &suffix);
                mesh_routes
                    .entry(host)
                    .or_default()
                    .push((ns.to_string(), vs.clone()));
            }
        }
        // Whether some mesh route's match (HTTP, TCP or TLS) says `pred` of its source fields.
        let some_match = |pred: fn(&Labels, Option<&String>) -> bool| {
            mesh_routes.values().flatten().any(|(_, vs)| {
                vs.http.iter().any(|r| {
                    r.matches
                        .iter()
                        .any(|m| pred(&m.source_labels, m.source_namespace.as_ref()))
                }) || vs.tcp.iter().any(|r| {
                    r.matches
                        .iter()
                        .any(|m| pred(&m.source_labels, m.source_namespace.as_ref()))
                }) || vs.tls.iter().any(|r| {
                    r.matches
                        .iter()
                        .any(|m| pred(&m.source_labels, m.source_namespace.as_ref()))
                })
            })
        };
        let uses_source_labels = some_match(|labels, _| !labels.is_empty());
        let routes_see_namespace = restricted || some_match(|_, ns| ns.is_some());
        let mut workloads = HashMap::new();
        for (i, w) in config.workloads.iter().enumerate() {
            // The first of a duplicated name wins, as in `MeshConfig::workload`.
            workloads
                .entry((w.namespace.clone(), w.name.clone()))
                .or_insert(i);
        }
        let (telemetries, telemetries_refused) = super::telemetry_api::in_force(&config, opts);
        let authz_refused = super::authz::custom_refused(&config, &opts.root_namespace, opts);
        let mut index = Index {
            workloads,
            uses_source_labels,
            routes_see_namespace,
            domain_suffix: suffix,
            root_namespace: opts.root_namespace.clone(),
            services,
            destination_rules: BTreeMap::new(),
            dr_candidates,
            dr_selected,
            restricted,
            mesh_routes,
            peer_authn: config
                .peer_authentications()
                .map(|(o, pa)| (o.meta.namespace().to_string(), pa.clone()))
                .collect(),
            sidecars: config
                .sidecars()
                .map(|(o, s)| (o.clone(), s.clone()))
                .collect(),
            telemetries,
            telemetries_refused,
            authz_refused,
            config,
        };
        // The rule every namespace without a more specific one sees.
        index.destination_rules = index
            .dr_candidates
            .keys()
            .filter_map(|host| {
                let dr = index.pick_destination_rule(host, "")?;
                Some((host.clone(), dr.clone()))
            })
            .collect();
        index
    }

    /// Istio's choice of DestinationRule for `host` as seen from namespace `ns` (`""`: a
    /// namespace with nothing of its own, which sees only what is exported everywhere): among
    /// the rules exported to `ns`, the one in `ns`, else in the service's namespace, else in the
    /// root namespace; a rule in any other namespace applies to its own namespace's proxies only,
    /// as Istio looks no further. Unrestricted, a host has one rule at most, in its service's or
    /// the root namespace.
    pub(super) fn pick_destination_rule(&self, host: &str, ns: &str) -> Option<&RuleRef> {
        let candidates = self.dr_candidates.get(host)?;
        if !self.restricted {
            return candidates.first().map(|(_, dr)| dr);
        }
        let visible: Vec<&(String, RuleRef)> = candidates
            .iter()
            .filter(|(dr_ns, dr)| meshd_model::registry::exported_to(&dr.export_to, dr_ns, ns))
            .collect();
        let service_ns = self.service(host).map(|s| s.namespace.as_str());
        let in_ns = |want: Option<&str>| {
            visible
                .iter()
                .find(|(dr_ns, _)| want.is_some_and(|w| !w.is_empty() && dr_ns == w))
        };
        in_ns(Some(ns))
            .or_else(|| in_ns(service_ns))
            .or_else(|| in_ns(Some(self.root_namespace.as_str())))
            .map(|(_, dr)| dr)
    }

    pub fn workload(&self, name: &str, namespace: &str) -> Option<&Workload> {
        let i = self
            .workloads
            .get(&(namespace.to_string(), name.to_string()))?;
        self.config.workloads.get(*i)
    }

    /// The DestinationRule proxies in `ns` get for `host` (`exportTo` applied), leaving aside
    /// rules with a `workloadSelector` (`rule_for` adds them).
    pub fn destination_rule_in(&self, host: &str, ns: &str) -> Option<&DestinationRule> {
        if !self.restricted {
            return self.destination_rule(host);
        }
        self.pick_destination_rule(host, ns).map(|d| &**d)
    }

    /// The DestinationRules with a `workloadSelector` in force for a proxy in `ns` with
    /// `labels`: those of its own namespace selecting it, for each host the first by name.
    /// Istio takes the oldest; meshd keeps no creation time, and Istio breaks ties by name.
    pub fn selected_rules(&self, ns: &str, labels: &Labels) -> SelectedRules {
        let mut rules = SelectedRules::default();
        for (host, dr) in self.dr_selected.get(ns).into_iter().flatten() {
            let selects = dr
                .workload_selector
                .as_ref()
                .is_some_and(|s| selector_matches(&s.labels, labels));
            if selects {
                rules.insert(host, dr);
            }
        }
        rules
    }

    /// The DestinationRule a proxy in `ns` applies to `host`: a rule of `rules` (selecting it)
    /// over the one it would see without them.
    pub fn rule_for<'a>(
        &'a self,
        host: &str,
        ns: &str,
        rules: &'a SelectedRules,
    ) -> Option<&'a DestinationRule> {
        rules
            .get(host)
            .or_else(|| self.destination_rule_in(host, ns))
    }

    /// Whether what a proxy sees depends on its namespace: some ServiceEntry, Service,
    /// VirtualService or DestinationRule narrows its `exportTo`, or some host has
    /// DestinationRules (without a selector) in more than one namespace, which are never
    /// merged: Istio's lookup takes the proxy's namespace's, then the service's, then the root
    /// namespace's.
    pub fn restricted(&self) -> bool {
        self.restricted
    }

    pub fn service(&self, host: &str) -> Option<&Service> {
        self.config.services.get(*self.services.get(host)?)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|i| &self.config.services[*i])
    }

    pub fn destination_rule(&self, host: &str) -> Option<&DestinationRule> {
        self.destination_rules.get(host).map(|d| &**d)
    }

    /// The mesh VirtualServices for `host` that proxies in `ns` see (`exportTo`).
    pub fn mesh_virtual_services<'a>(
        &'a self,
        host: &str,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a VirtualService)> + 'a {
        self.mesh_routes
            .get(host)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter(move |(vs_ns, vs)| meshd_model::registry::exported_to(&vs.export_to, vs_ns, ns))
            .map(|(vs_ns, vs)| (vs_ns.as_str(), &**vs))
    }

    pub(super) fn subsets(&self, host: &str) -> &[Subset] {
        self.destination_rule(host)
            .map(|d| d.subsets.as_slice())
            .unwrap_or(&[])
    }

    /// The PeerAuthentication mode in force for a workload port, with Istio's precedence:
    /// workload selector, then namespace, then mesh-wide (root namespace); PERMISSIVE by default.
    pub fn mtls_mode(
        &self,
        namespace: &str,
        labels: &meshd_model::networking::Labels,
        port: u32,
    ) -> MtlsMode {
        let set = |m: MtlsMode| (m != MtlsMode::Unset).then_some(m);
        let workload = self.peer_authn.iter().find(|(ns, pa)| {
            ns == namespace
                && pa
                    .selector
                    .as_ref()
                    .is_some_and(|s| selector_matches(&s.labels, labels))
        });
        if let Some((_, pa)) = workload {
            if let Some(m) = pa.port_level_mtls.get(&port).and_then(|m| set(m.mode)) {
                return m;
            }
            if let Some(m) = pa.mtls.as_ref().and_then(|m| set(m.mode)) {
                return m;
            }
        }
        let scoped = |scope: &str| {
            self.peer_authn
                .iter()
                .find(|(ns, pa)| ns == scope && pa.selector.is_none())
                .and_then(|(_, pa)| pa.mtls.as_ref().and_then(|m| set(m.mode)))
        };
        scoped(namespace)
            .or_else(|| scoped(&self.root_namespace))
            .unwrap_or(MtlsMode::Permissive)
    }

    pub fn accepts_mtls(&self, e: &Endpoint, port: &Port) -> bool {
        cluster::endpoint_accepts_mtls(self.mtls_mode(&e.namespace, &e.labels, e.port_for(port)))
    }

    /// The Sidecar resource for a workload: selector match in its namespace, else the
    /// namespace default, else the mesh default in the root namespace.
    pub fn sidecar_for(
        &self,
        namespace: &str,
        labels: &meshd_model::networking::Labels,
    ) -> Option<&(ConfigObject, Sidecar)> {
        meshd_model::registry::sidecar_for(
            &self.sidecars,
            |e| (e.0.meta.namespace(), &e.1),
            &self.root_namespace,
            namespace,
            labels,
        )
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod merge_tests;
