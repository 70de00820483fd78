//! RequestAuthentication → Envoy's `envoy.filters.http.jwt_authn` on a workload's inbound HTTP
//! path (and a gateway's), ahead of the RBAC filters, with Istio's semantics:
//!
//! - **Scope**: as AuthorizationPolicy: the root namespace's apply mesh-wide, others to their
//!   namespace; a `selector` narrows either. Every jwtRule of every RequestAuthentication that
//!   applies is one provider.
//! - **Verdict**: a request with a token that fails verification (bad signature, unknown
//!   issuer, expired, wrong audience) is refused with 401; a request without any token passes
//!   (`requires_any` of the providers and `allow_missing`). Requiring a token is an
//!   AuthorizationPolicy's job (`requestPrincipals`).
//! - **Identity for RBAC**: each provider writes the verified payload into the filter's dynamic
//!   metadata under [`PAYLOAD_KEY`]; the RBAC rules for `requestPrincipals` and
//!   `request.auth.*` match it there (`authz_jwt.rs`).
//! - **Keys**: inline `jwks` as is; a `jwksUri` (or the issuer's OpenID discovery) as the keys
//!   meshd fetched, found in `MeshConfig::jwks`. Until a fetch succeeds, a key nobody holds, so
//!   every token of that issuer fails (401) rather than passing unverified, as istiod does.
//!
//! Pure: config (with the fetched keys as data) in, Envoy protos out.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementOrList, RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Empty};
use meshd_model::MeshConfig;
use meshd_model::jwt::KeySource;
use meshd_model::networking::Labels;
use meshd_model::registry::selector_matches;
use meshd_model::security::{JwtRule, RequestAuthentication};
use prost::{Message, Name};
use std::collections::BTreeMap;

pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

/// Where each provider puts the verified token's payload in the filter's dynamic metadata.
pub const PAYLOAD_KEY: &str = "payload";

/// An RSA public key whose private half nobody has: a rule whose keys meshd could not fetch
/// yet verifies no token with it.
const NO_KEYS_YET: &str = r#"{"keys":[{"kty":"RSA","kid":"meshd-jwks-unavailable","alg":"RS256","e":"AQAB","n":"rmWgzierKlsmMo03mKjB1WdLX3qdOs6ZyJpM-O8YKQahn7CsUNsoNt4OHM1X0jOgxuEbbKxKYEnEm9hEM609Jh05BIw_2LflFatNQuuOGqJPh49k8vc-7gKVmGzmxhmFIpG4Xzv0r7UH69sx9022PQTNWcRSAA6MhziMgHIjgx_EuOR8kdnI2IwAYLRgtG4U3K93kNgX6R5Wr1H0yKxvCnYG_Fh6N5mLe4gQZ88FPRQ1CR9vILsVnZ-sta58E8Nk0J5-CdsLRJsRDfQOxy9y4s6nTIW_2lqds1LnlUCew1WTzTKrZiHHIQQG_4U-HZv0nTVTPz_oQvOM0U38xyitRQ"}]}"#;

/// One RequestAuthentication in force for a workload.
pub struct AppliedAuthn<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a RequestAuthentication,
}

/// The RequestAuthentications that apply to a workload in `namespace` with `labels`, in
/// (namespace, name) order.
pub fn applicable<'a>(
    config: &'a MeshConfig,
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> Vec<AppliedAuthn<'a>> {
    config
        .request_authentications()
        .filter(|(o, ra)| {
            let ns = o.meta.namespace();
            (ns == namespace || ns == root_namespace)
                && ra
                    .selector
                    .as_ref()
                    .is_none_or(|s| selector_matches(&s.labels, labels))
        })
        .map(|(o, ra)| AppliedAuthn {
            namespace: o.meta.namespace(),
            name: &o.meta.name,
            spec: ra,
        })
        .collect()
}

/// The jwt_authn filter for a workload (or gateway) in `namespace` with `labels`; `None` when
/// no RequestAuthentication with a rule applies.
pub fn jwt_filter(
    config: &MeshConfig,
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> Option<HttpFilter> {
    let applied = applicable(config, root_namespace, namespace, labels);
    let providers: BTreeMap<String, JwtProvider> = applied
        .iter()
        .flat_map(|a| {
            a.spec.jwt_rules.iter().enumerate().map(move |(i, rule)| {
                (
                    provider_name(a.namespace, a.name, i),
                    provider(config, rule),
                )
            })
        })
        .collect();
    if providers.is_empty() {
        return None;
    }
    Some(HttpFilter {
        name: JWT_AUTHN.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(encode(&providers))),
        ..Default::default()
    })
}

/// `ns[<namespace>]-requestauthn[<name>]-rule[<index>]`: named after its object, so a proxy's
/// config dump says where a provider came from.
pub fn provider_name(namespace: &str, name: &str, index: usize) -> String {
    format!("ns[{namespace}]-requestauthn[{name}]-rule[{index}]")
}

fn inline(text: &str) -> jwt_provider::JwksSourceSpecifier {
    jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.into())),
        ..Default::default()
    })
}

fn provider(config: &MeshConfig, rule: &JwtRule) -> JwtProvider {
    let keys = match rule.key_source() {
        KeySource::Inline(text) => inline(text),
        KeySource::Fetched(at) => inline(
            config
                .jwks
                .get(&at)
                .and_then(|f| f.keys.as_deref())
                .unwrap_or(NO_KEYS_YET),
        ),
    };
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: PAYLOAD_KEY.into(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(keys),
        ..Default::default()
    }
}

/// Any one provider verifies the token, or there is none at all.
fn requirement(providers: &BTreeMap<String, JwtProvider>) -> RequirementRule {
    let mut any: Vec<JwtRequirement> = providers
        .keys()
        .map(|name| JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(name.clone())),
        })
        .collect();
    any.push(JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
    });
    RequirementRule {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        requirement_type: Some(requirement_rule::RequirementType::Requires(
            JwtRequirement {
                requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
                    JwtRequirementOrList { requirements: any },
                )),
            },
        )),
    }
}

// `JwtAuthentication.providers` is a protobuf map, a `HashMap` in prost: its encoding order
// would change between generations and with it the listener's content hash. This mirrors the
// message with the map in its wire-identical form, entries in name order.

#[derive(Clone, PartialEq, Message)]
struct ProviderEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<JwtProvider>,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication` (the fields we set).
#[derive(Clone, PartialEq, Message)]
struct SortedJwtAuthentication {
    #[prost(message, repeated, tag = "1")]
    providers: Vec<ProviderEntry>,
    #[prost(message, repeated, tag = "2")]
    rules: Vec<RequirementRule>,
    #[prost(bool, tag = "4")]
    bypass_cors_preflight: bool,
}

fn encode(providers: &BTreeMap<String, JwtProvider>) -> Any {
    let config = SortedJwtAuthentication {
        providers: providers
            .iter()
            .map(|(k, v)| ProviderEntry {
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect(),
        rules: vec![requirement(providers)],
        // A CORS preflight carries no token; it must reach the CORS filter, as in Istio.
        bypass_cors_preflight: true,
    };
    Any {
        type_url: JwtAuthentication::type_url(),
        value: config.encode_to_vec(),
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
