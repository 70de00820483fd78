//! DestinationRules with a `workloadSelector`: the set a proxy gets (`Index::selected_rules`:
//! its own namespace's rules selecting its labels, ahead of any rule without a selector), and
//! the outbound clusters made under them (and, for gateways, under rules naming a client
//! `credentialName`, which only gateways and selected sidecars read). Proxies no such rule
//! selects get an empty set and keep the layers every other proxy shares; those with the same
//! set share theirs.

use super::credential::{CredentialWants, names_credential, rule_wants};
use super::locality::LocalityPlans;
use super::{GenOptions, MeshSnapshot, cluster};
use crate::resource::{Layer, LayerMap, Resource, SharedResource, reuse_layer};
use meshd_model::SpecRef;
use meshd_model::networking::DestinationRule;
use meshd_model::registry::Service;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The rules with a `workloadSelector` in force for one proxy, by qualified host.
#[derive(Clone, Default)]
pub struct SelectedRules(BTreeMap<String, SpecRef<DestinationRule>>);

/// What proxies with the same [`SelectedRules`] share: each host with its rule's
/// `namespace/name`. Empty for every proxy no such rule selects.
pub type RulesKey = Vec<(String, String)>;

impl SelectedRules {
    /// Adds `rule` for `host` unless a rule earlier in Istio's order holds it.
    pub(super) fn insert(&mut self, host: &str, rule: &SpecRef<DestinationRule>) {
        self.0
            .entry(host.to_string())
            .or_insert_with(|| rule.clone());
    }

    pub fn get(&self, host: &str) -> Option<&DestinationRule> {
        self.0.get(host).map(|r| &**r)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn key(&self) -> RulesKey {
        self.0
            .iter()
            .map(|(host, r)| {
                let meta = &r.object().meta;
                (host.clone(), format!("{}/{}", meta.namespace(), meta.name))
            })
            .collect()
    }

    /// The hosts with a rule, each with it.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &DestinationRule)> {
        self.0.iter().map(|(h, r)| (h.as_str(), &**r))
    }
}

/// A gateway's outbound clusters and endpoints when rules with a `workloadSelector` select it.
pub struct Outbound {
    pub clusters: Layer,
    pub endpoints: Layer,
    pub locality: Arc<LocalityPlans>,
}

impl Outbound {
    pub fn reusing(self, old: &Outbound) -> Outbound {
        Outbound {
            clusters: reuse_layer(Some(&old.clusters), self.clusters),
            endpoints: reuse_layer(Some(&old.endpoints), self.endpoints),
            locality: self.locality,
        }
    }
}

/// Cluster and endpoint resources by name, and the locality plans of the endpoints.
pub(super) struct ClusterMaps<'a> {
    pub clusters: &'a mut BTreeMap<String, SharedResource>,
    pub endpoints: &'a mut BTreeMap<String, SharedResource>,
    pub locality: &'a mut Arc<LocalityPlans>,
}

impl MeshSnapshot {
    /// Replaces in `maps` the clusters of each service of `own` (its ports `port_visible`
    /// allows) with clusters made under the given rule, its subsets included, for a gateway or a
    /// sidecar; returns the client credentials those clusters name.
    pub(super) fn clusters_under(
        &self,
        maps: ClusterMaps<'_>,
        (own, gateway): (&[(&Service, Option<&DestinationRule>)], bool),
        port_visible: &dyn Fn(&Service, u32) -> bool,
        opts: &GenOptions,
    ) -> CredentialWants {
        let mut wants = CredentialWants::new();
        for (svc, rule) in own {
            if let Some(r) = rule
                && (gateway || r.workload_selector.is_some())
            {
                rule_wants(r, svc, &|p| port_visible(svc, p), &mut wants);
            }
            for name in self
                .clusters_by_host
                .get(&svc.hostname)
                .into_iter()
                .flatten()
            {
                maps.clusters.remove(name);
                maps.endpoints.remove(name);
                if maps.locality.plans.contains_key(name) {
                    Arc::make_mut(maps.locality).plans.remove(name);
                }
            }
            let subsets = rule.map(|r| r.subsets.as_slice()).unwrap_or(&[]);
            for port in svc.ports.iter().filter(|p| port_visible(svc, p.number)) {
                for subset in std::iter::once(None).chain(subsets.iter().map(Some)) {
                    let out = cluster::outbound_with_rule(
                        &self.index,
                        (*rule, gateway),
                        svc,
                        port,
                        subset,
                        opts,
                    );
                    let name = out.cluster.name.clone();
                    if let Some(plan) = out.locality {
                        Arc::make_mut(maps.locality).insert(name.clone(), plan);
                    }
                    if let Some(la) = out.load_assignment {
                        maps.endpoints
                            .insert(name.clone(), Resource::encode(name.clone(), &la));
                    }
                    maps.clusters
                        .insert(name.clone(), Resource::encode(name, &out.cluster));
                }
            }
        }
        wants
    }

    /// A gateway's outbound layers: the mesh-wide ones, with the clusters of the hosts of
    /// `rules` and of those whose rule names a client credential made for it; `None` when there
    /// are none (the gateway takes the mesh-wide ones). With the credentials they name.
    pub(super) fn gateway_outbound(
        &self,
        rules: &SelectedRules,
    ) -> (Option<Outbound>, CredentialWants) {
        let credential_rules = self
            .index
            .destination_rules
            .iter()
            .filter(|(host, r)| rules.get(host).is_none() && names_credential(r))
            .map(|(host, r)| (host.as_str(), &**r));
        let own: Vec<(&Service, Option<&DestinationRule>)> = rules
            .iter()
            .chain(credential_rules)
            .filter_map(|(host, rule)| Some((self.index.service(host)?, Some(rule))))
            .collect();
        if own.is_empty() {
            return (None, CredentialWants::new());
        }
        let mut clusters = BTreeMap::clone(&self.clusters);
        let mut endpoints = BTreeMap::clone(&self.endpoints);
        let mut locality = self.locality_plans.clone();
        let wants = self.clusters_under(
            ClusterMaps {
                clusters: &mut clusters,
                endpoints: &mut endpoints,
                locality: &mut locality,
            },
            (&own, true),
            &|_, _| true,
            &self.opts,
        );
        let outbound = Outbound {
            clusters: LayerMap::new(clusters),
            endpoints: LayerMap::new(endpoints),
            locality,
        };
        (Some(outbound), wants)
    }
}

#[cfg(test)]
#[path = "selected_tests.rs"]
mod tests;
