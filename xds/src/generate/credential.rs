//! SDS secrets from the TLS Secrets of a proxy's own namespace, for exactly the
//! `credentialName`s its config names: a Gateway server's (its certificate; the CA that checks
//! clients) and a DestinationRule's (the client certificate; the CA that checks the server).
//! Never a Secret of another namespace, never one no resource of the proxy refers to.

use super::cluster::EffectivePolicy;
use super::common::inline_bytes;
use crate::resource::{Resource, SharedResource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use meshd_model::credential::{sds_ca_name, sds_name};
use meshd_model::networking::{DestinationRule, TlsMode};
use meshd_model::{MeshConfig, registry::Service};
use std::collections::BTreeMap;

/// What a proxy's resources ask of one credential: its certificate and key, its CA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    pub cert: bool,
    pub ca: bool,
}

/// By credential (Secret) name.
pub type CredentialWants = BTreeMap<String, Wants>;

pub fn want(wants: &mut CredentialWants, name: &str, cert: bool, ca: bool) {
    let w = wants.entry(name.to_string()).or_default();
    w.cert |= cert;
    w.ca |= ca;
}

/// The credentials `rule` names in the clusters made under it for `svc`'s ports `port_ok`
/// allows (each subset included), as `cluster::policy::originate_tls` refers to them.
pub fn rule_wants(
    rule: &DestinationRule,
    svc: &Service,
    port_ok: &dyn Fn(u32) -> bool,
    wants: &mut CredentialWants,
) {
    let subsets = std::iter::once(None).chain(rule.subsets.iter().map(Some));
    for subset in subsets {
        for port in svc.ports.iter().filter(|p| port_ok(p.number)) {
            let policy =
                EffectivePolicy::resolve(rule.traffic_policy.as_deref(), subset, port.number);
            let Some(t) = policy.tls else { continue };
            if let Some(name) = &t.credential_name
                && matches!(t.mode, TlsMode::Simple | TlsMode::Mutual)
            {
                let verify = !t.insecure_skip_verify.unwrap_or(false);
                want(wants, name, t.mode == TlsMode::Mutual, verify);
            }
        }
    }
}

/// Whether some policy of `rule` (top level, port, subset) names a client credential.
pub fn names_credential(rule: &DestinationRule) -> bool {
    let in_policy = |tp: &meshd_model::networking::TrafficPolicy| {
        tp.tls.iter().any(|t| t.credential_name.is_some())
            || tp
                .port_level_settings
                .iter()
                .any(|p| p.tls.as_ref().is_some_and(|t| t.credential_name.is_some()))
    };
    rule.traffic_policy.as_deref().is_some_and(in_policy)
        || rule
            .subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_deref())
            .any(in_policy)
}

/// The SDS secrets for `wants`, from the credentials of `namespace`. One missing is left out:
/// Envoy keeps what refers to it warming (not serving) until it appears, and the rest serves.
/// The CA (and its `ca.crl`) comes from the Secret itself, else from `<name>-cacert` (Istio's
/// layout).
pub fn secrets(
    config: &MeshConfig,
    namespace: &str,
    wants: &CredentialWants,
) -> BTreeMap<String, SharedResource> {
    let lookup = |name: &str| {
        config
            .credentials
            .get(&(namespace.to_string(), name.to_string()))
    };
    let mut out = BTreeMap::new();
    for (name, w) in wants {
        if w.cert
            && let Some(c) = lookup(name)
            && let (Some(chain), Some(key)) = (&c.cert_chain, &c.private_key)
        {
            let cert_name = sds_name(name);
            let s = Secret {
                name: cert_name.clone(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline_bytes(chain.as_bytes())),
                    private_key: Some(inline_bytes(key.as_bytes())),
                    ..Default::default()
                })),
            };
            out.insert(cert_name.clone(), Resource::encode(cert_name, &s));
        }
        if !w.ca {
            continue;
        }
        // The CA and its CRL come from one Secret, never a CA from one and a CRL from another.
        let holder = lookup(name)
            .filter(|c| c.ca_cert.is_some())
            .or_else(|| lookup(&format!("{name}-cacert")).filter(|c| c.ca_cert.is_some()));
        if let Some((ca, crl)) = holder.and_then(|c| Some((c.ca_cert.as_ref()?, c.ca_crl.as_ref())))
        {
            let ca_name = sds_ca_name(name);
            let s = Secret {
                name: ca_name.clone(),
                r#type: Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(inline_bytes(ca.as_bytes())),
                        crl: crl.map(|c| inline_bytes(c.as_bytes())),
                        ..Default::default()
                    },
                )),
            };
            out.insert(ca_name.clone(), Resource::encode(ca_name, &s));
        }
    }
    out
}

#[cfg(test)]
#[path = "credential_tests.rs"]
mod tests;
