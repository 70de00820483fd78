//! `security.istio.io` types, field for field as Istio spells them in YAML.

use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The security APIs' `selector: {matchLabels: {...}}`.
pub use crate::networking::MatchLabelsSelector as WorkloadSelector;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<MutualTls>,
    #[serde(default)]
    pub port_level_mtls: PortMap<MutualTls>,
}

/// A map keyed by port number (`portLevelMtls: {8080: ...}`), read from a YAML integer key or
/// the API server's string key alike. Remembers whether it was written at all: Istio refuses an
/// empty one, and an absent one is no error.
#[derive(Clone, Debug, PartialEq)]
pub struct PortMap<T> {
    ports: BTreeMap<u32, T>,
    written: bool,
}

impl<T> Default for PortMap<T> {
    fn default() -> Self {
        PortMap {
            ports: BTreeMap::new(),
            written: false,
        }
    }
}

impl<T> PortMap<T> {
    /// Whether the field was in the object (possibly as `{}`).
    pub fn written(&self) -> bool {
        self.written
    }
}

impl<T> std::ops::Deref for PortMap<T> {
    type Target = BTreeMap<u32, T>;
    fn deref(&self) -> &BTreeMap<u32, T> {
        &self.ports
    }
}

impl<T> FromIterator<(u32, T)> for PortMap<T> {
    fn from_iter<I: IntoIterator<Item = (u32, T)>>(iter: I) -> Self {
        PortMap {
            ports: iter.into_iter().collect(),
            written: true,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for PortMap<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ports<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Ports<T> {
            type Value = PortMap<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from port numbers")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut ports = BTreeMap::new();
                while let Some(PortKey(port)) = map.next_key()? {
                    ports.insert(port, map.next_value()?);
                }
                Ok(PortMap {
                    ports,
                    written: true,
                })
            }
        }
        d.deserialize_map(Ports(std::marker::PhantomData))
    }
}

/// A port number as a map key: `8080` in YAML, `"8080"` in JSON (the API server's spelling).
struct PortKey(u32);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = PortKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<PortKey, E> {
                u32::try_from(n)
                    .map(PortKey)
                    .map_err(|_| E::custom(format!("port {n} is out of range 1-65535")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<PortKey, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("port {n} is out of range 1-65535")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PortKey, E> {
                match s.parse::<u64>() {
                    Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => self.visit_u64(n),
                    _ => Err(E::custom(format!("`{s}` is not a port number"))),
                }
            }
        }
        d.deserialize_any(Key)
    }
}

impl<T: Serialize> Serialize for PortMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.ports.serialize(s)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope; PERMISSIVE when nothing is set above.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// The annotation that makes an AuthorizationPolicy a dry run (evaluated, never enforced).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Whether an object's `annotations` ask for a dry run.
pub fn is_dry_run(annotations: &crate::name_map::NameMap<String>) -> bool {
    annotations
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub action: AuthzAction,
    pub provider: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    /// Set by the parser when the spec could not be read in full (a field meshd does not know, a
    /// value of the wrong type): the policy is then kept, with only its selector, to fail closed.
    #[serde(skip)]
    pub unreadable: Option<ConfigError>,
}

impl AuthorizationPolicy {
    /// The extension provider a CUSTOM policy delegates to (`spec.provider.name`).
    pub fn provider_name(&self) -> Option<&str> {
        self.provider.as_ref()?.get("name")?.as_str()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Kubernetes service accounts as `namespace/name` (Istio 1.25+): the peer certificate's
    /// identity in the mesh's trust domain, without writing SPIFFE IDs.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Operation,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// A `when` condition's key, as Istio names the attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.headers[<name>]` (HTTP only).
    RequestHeader(String),
    /// `source.ip`: the peer address of the connection.
    SourceIp,
    /// `remote.ip`: the original client address (X-Forwarded-For / PROXY protocol aware).
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    ConnectionSni,
    /// `request.auth.*` (JWT claims and principals): needs a RequestAuthentication.
    RequestAuth(String),
    /// `experimental.envoy.filters.*`.
    EnvoyFilter(String),
    Unknown(String),
}

impl ConditionKey {
    pub fn parse(key: &str) -> ConditionKey {
        match key {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "connection.sni" => ConditionKey::ConnectionSni,
            _ => {
                if let Some(rest) = key.strip_prefix("request.headers") {
                    match rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                        Some(name) if !name.is_empty() => {
                            ConditionKey::RequestHeader(name.to_string())
                        }
                        _ => ConditionKey::Unknown(key.to_string()),
                    }
                } else if key.starts_with("request.auth.") {
                    ConditionKey::RequestAuth(key.to_string())
                } else if key.starts_with("experimental.envoy.filters.") {
                    ConditionKey::EnvoyFilter(key.to_string())
                } else {
                    ConditionKey::Unknown(key.to_string())
                }
            }
        }
    }

    /// Matched on the request (Envoy's HTTP filter only); on a TCP port such a condition can
    /// never be evaluated.
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            ConditionKey::RequestHeader(_) | ConditionKey::RequestAuth(_)
        )
    }
}

impl Condition {
    pub fn parsed_key(&self) -> ConditionKey {
        ConditionKey::parse(&self.key)
    }
}

impl Operation {
    /// Whether any HTTP-only field (hosts, methods, paths and their not-forms) is set.
    pub fn has_http_fields(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        !self.has_http_fields() && self.ports.is_empty() && self.not_ports.is_empty()
    }
}

impl Source {
    pub fn is_empty(&self) -> bool {
        *self == Source::default()
    }

    /// The principal (SPIFFE ID without `spiffe://`, trust domain `cluster.local` standing for
    /// the mesh's own, as in `principals`) a `serviceAccounts` entry `namespace/name` names.
    /// `None` when the entry is not of that form (reported by validation).
    pub fn service_account_principal(entry: &str) -> Option<String> {
        let (namespace, name) = entry.split_once('/')?;
        let part_ok = |s: &str| !s.is_empty() && !s.contains('/') && !s.contains('*');
        (part_ok(namespace) && part_ok(name))
            .then(|| format!("cluster.local/ns/{namespace}/sa/{name}"))
    }
}

/// `RequestAuthentication`: the JWTs a workload verifies (Envoy's jwt_authn; see `crate::jwt`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Istio's CRD also serves the proto name.
    #[serde(alias = "jwks_uri")]
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, with = "crate::duration::option")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub timeout: Option<std::time::Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

impl JwtRule {
    pub fn key_source(&self) -> crate::jwt::KeySource<'_> {
        match (&self.jwks, &self.jwks_uri) {
            (Some(inline), _) => crate::jwt::KeySource::Inline(inline),
            (None, Some(uri)) => {
                crate::jwt::KeySource::Fetched(crate::jwt::JwksLocation::Uri(uri.clone()))
            }
            (None, None) => {
                crate::jwt::KeySource::Fetched(crate::jwt::JwksLocation::Discovery(format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                )))
            }
        }
    }

    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.timeout.unwrap_or(crate::jwt::DEFAULT_FETCH_TIMEOUT)
    }
}
