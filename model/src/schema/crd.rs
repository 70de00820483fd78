//! The CustomResourceDefinitions of the Istio kinds meshd reads, one line per kind in
//! [`CRD_KINDS`]: its names, the versions Istio serves it at (one schema for all of them, as
//! Istio's: no conversion), the one Istio stores, and the model type its spec is read into.

use super::spec_schema;
use crate::{envoyfilter, networking, security, telemetry};
use serde_json::{Value, json};

const NETWORKING: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";
const TELEMETRY: &str = "telemetry.istio.io";

/// Istio's versions per group, with the one it stores (the oldest: Istio keeps it so that a
/// downgrade still reads what was written).
const NETWORKING_VERSIONS: (&[&str], &str) = (&["v1alpha3", "v1beta1", "v1"], "v1alpha3");
const ENVOYFILTER_VERSIONS: (&[&str], &str) = (&["v1alpha3"], "v1alpha3");
const SECURITY_VERSIONS: (&[&str], &str) = (&["v1beta1", "v1"], "v1beta1");
const TELEMETRY_VERSIONS: (&[&str], &str) = (&["v1alpha1", "v1"], "v1alpha1");

/// One Istio kind's CRD.
pub struct CrdKind {
    pub kind: &'static str,
    pub group: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    /// Served versions, and the stored one among them.
    pub versions: (&'static [&'static str], &'static str),
    /// The spec's schema from the model type meshd reads it into; `None` while the model has no
    /// type for the kind (the spec is then kept as written, see [`permissive_spec`]).
    pub spec: Option<fn() -> Value>,
}

const fn kind(
    kind: &'static str,
    group: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    versions: (&'static [&'static str], &'static str),
    spec: Option<fn() -> Value>,
) -> CrdKind {
    CrdKind {
        kind,
        group,
        plural,
        short_names,
        versions,
        spec,
    }
}

/// Every Istio kind meshd reads (the contract's "Mesh config"); adding one is one line.
#[rustfmt::skip]
pub const CRD_KINDS: &[CrdKind] = &[
    kind("VirtualService", NETWORKING, "virtualservices", &["vs"], NETWORKING_VERSIONS, Some(spec_schema::<networking::VirtualService>)),
    kind("DestinationRule", NETWORKING, "destinationrules", &["dr"], NETWORKING_VERSIONS, Some(spec_schema::<networking::DestinationRule>)),
    kind("Gateway", NETWORKING, "gateways", &["gw"], NETWORKING_VERSIONS, Some(spec_schema::<networking::Gateway>)),
    kind("ServiceEntry", NETWORKING, "serviceentries", &["se"], NETWORKING_VERSIONS, Some(spec_schema::<networking::ServiceEntry>)),
    kind("WorkloadEntry", NETWORKING, "workloadentries", &["we"], NETWORKING_VERSIONS, Some(spec_schema::<networking::WorkloadEntry>)),
    kind("Sidecar", NETWORKING, "sidecars", &[], NETWORKING_VERSIONS, Some(spec_schema::<networking::Sidecar>)),
    kind("EnvoyFilter", NETWORKING, "envoyfilters", &[], ENVOYFILTER_VERSIONS, Some(spec_schema::<envoyfilter::EnvoyFilter>)),
    kind("PeerAuthentication", SECURITY, "peerauthentications", &["pa"], SECURITY_VERSIONS, Some(spec_schema::<security::PeerAuthentication>)),
    kind("AuthorizationPolicy", SECURITY, "authorizationpolicies", &["ap"], SECURITY_VERSIONS, Some(spec_schema::<security::AuthorizationPolicy>)),
    kind("RequestAuthentication", SECURITY, "requestauthentications", &["ra"], SECURITY_VERSIONS, Some(spec_schema::<security::RequestAuthentication>)),
    kind("Telemetry", TELEMETRY, "telemetries", &["telemetry"], TELEMETRY_VERSIONS, Some(spec_schema::<telemetry::Telemetry>)),
];

impl CrdKind {
    /// The spec's schema: the model's, or [`permissive_spec`] while there is none.
    pub fn spec_schema(&self) -> Value {
        match self.spec {
            Some(schema) => schema(),
            None => permissive_spec(self.kind),
        }
    }

    /// The CustomResourceDefinition, as JSON.
    pub fn definition(&self) -> Value {
        let (served, storage) = self.versions;
        let mut spec = self.spec_schema();
        if let Some(spec) = spec.as_object_mut() {
            spec.entry("description").or_insert_with(|| {
                json!(format!(
                    "The {} spec, as Istio's API spells it (see `meshd analyze` for what meshd \
                     supports).",
                    self.kind
                ))
            });
        }
        let versions: Vec<Value> = served
            .iter()
            .map(|version| {
                json!({
                    "name": version,
                    "served": true,
                    "storage": *version == storage,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": spec,
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": true,
                            },
                        },
                    }},
                })
            })
            .collect();
        let category = self.group.replace('.', "-");
        let mut names = json!({
            "kind": self.kind,
            "listKind": format!("{}List", self.kind),
            "plural": self.plural,
            "singular": self.kind.to_ascii_lowercase(),
            "categories": ["istio-io", category],
        });
        if !self.short_names.is_empty() {
            names["shortNames"] = json!(self.short_names);
        }
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": format!("{}.{}", self.plural, self.group),
                "labels": {"app.kubernetes.io/part-of": "meshd"},
            },
            "spec": {
                "group": self.group,
                "scope": "Namespaced",
                "names": names,
                "versions": versions,
            },
        })
    }
}

/// The spec of a kind meshd's model does not read yet: any object, kept as written, so what
/// users create now is still whole when meshd learns the kind (and the API server prunes none
/// of it meanwhile).
pub fn permissive_spec(kind: &str) -> Value {
    json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": format!(
            "meshd does not read {kind} specs yet, so their fields are not checked here; \
             they are kept as written."
        ),
    })
}

/// Every CRD, in [`CRD_KINDS`] order.
pub fn custom_resource_definitions() -> Vec<Value> {
    CRD_KINDS.iter().map(CrdKind::definition).collect()
}
