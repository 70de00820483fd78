//! AuthorizationPolicy `action: CUSTOM`: external authorization through an extension provider
//! of the server's MeshConfig (`meshd serve --mesh-config`), as Istio builds it. On an HTTP port
//! the CUSTOM rules become the shadow rules of an `envoy.filters.http.rbac` filter (policies
//! named `istio-ext-authz-ns[..]-policy[..]-rule[..]`), which only marks a request a rule
//! matches in its dynamic metadata; the `envoy.filters.http.ext_authz` filter after it asks the
//! authorizer for exactly those requests. Both sit after AUDIT and before DENY (Istio's order
//! CUSTOM, DENY, ALLOW). On a TCP port an `envoyExtAuthzGrpc` provider is called the same way
//! through the network filters (authz_custom_tcp.rs).
//!
//! Fail closed: a CUSTOM policy naming a provider the server lacks, or whose service is not in
//! the registry, and every CUSTOM policy of a workload whose CUSTOM policies name different
//! providers (Istio allows one per workload) become deny-all rules in the DENY filter; each is
//! reported through `MeshSnapshot::problems()` (`refused`). An `envoyExtAuthzHttp` provider
//! cannot authorize a TCP connection (Envoy's network ext_authz speaks gRPC only), so on a TCP
//! port its CUSTOM rules deny the connections they match (HTTP-only fields dropped, as in DENY):
//! CUSTOM never lets through what the authorizer might have refused.

use super::matchers::{exact, istio_string, prefix_matcher};
use super::{
    Action, Applied, HttpRbacConfig, Policies, RuleCtx, fail_closed_rule, policy_name, sorted,
};
use crate::generate::GenOptions;
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, HeaderValue, HttpUri, grpc_service, http_uri,
};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::Policy;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ea;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, StringMatcher, ValueMatcher, metadata_matcher,
    value_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::{Any, Duration};
use meshd_model::extension_provider::{ExtAuthzKind, ExtAuthzProvider, RequestBody, status_code};
use meshd_model::security::AuthzAction;
use meshd_model::{MeshConfig, Rejected};
use prost::{Message, Name};

pub const HTTP_EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
/// The shadow RBAC filter's stat prefix; Envoy also prefixes its metadata keys with it.
const STAT_PREFIX: &str = "istio_ext_authz_";
const RULE_PREFIX: &str = "istio-ext-authz";
/// Istio's default `timeout` of an ext_authz provider.
const DEFAULT_TIMEOUT_SECS: i64 = 600;

/// A provider resolved against the registry: what the ext_authz filter calls.
struct Resolved<'a> {
    provider: &'a ExtAuthzProvider,
    cluster: String,
    host: &'a str,
    status_on_error: StatusCode,
}

/// Why a CUSTOM policy naming `name` cannot be served, or the provider it calls.
fn resolve<'a>(
    name: &str,
    config: &MeshConfig,
    opts: &'a GenOptions,
) -> Result<Resolved<'a>, String> {
    let Some(provider) = opts.ext_authz_providers.iter().find(|p| p.name == name) else {
        return Err(format!(
            "spec.provider.name: `{name}` is not an envoyExtAuthzHttp or envoyExtAuthzGrpc extension provider of this server (meshd serve --mesh-config)"
        ));
    };
    let (ns, host, port) = provider.service();
    let known = config.services.iter().any(|s| {
        s.hostname == host
            && ns.is_none_or(|ns| ns == s.namespace)
            && s.ports.iter().any(|p| p.number == port)
    });
    if !known {
        return Err(format!(
            "spec.provider.name: provider `{name}`'s service `{}` port {port} is not in the registry",
            match ns {
                Some(ns) => format!("{ns}/{host}"),
                None => host.to_string(),
            }
        ));
    }
    let status = match &provider.kind {
        ExtAuthzKind::Http(h) => &h.status_on_error,
        ExtAuthzKind::Grpc(g) => &g.status_on_error,
    };
    let status_on_error = status_code(status)
        .and_then(|c| StatusCode::try_from(c as i32).ok())
        .ok_or_else(|| {
            format!("provider `{name}`: statusOnError `{status}` is not a status Envoy knows")
        })?;
    Ok(Resolved {
        provider,
        cluster: super::super::cluster::outbound_name(port, "", host),
        host,
        status_on_error,
    })
}

/// The CUSTOM policies among `policies` (those without problems: the others already fail
/// closed), each with its provider or why it fails closed.
fn customs<'p, 'o>(
    policies: &[Applied<'p>],
    config: &MeshConfig,
    opts: &'o GenOptions,
) -> Vec<(Applied<'p>, Result<Resolved<'o>, String>)> {
    let mut out: Vec<_> = policies
        .iter()
        .filter(|a| a.policy.action == AuthzAction::Custom && a.policy.problems().is_empty())
        .map(|a| {
            (
                *a,
                resolve(a.policy.provider_name().unwrap_or_default(), config, opts),
            )
        })
        .collect();
    let mut names: Vec<&str> = out
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|r| r.provider.name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    if names.len() > 1 {
        let why = format!(
            "the CUSTOM policies of one workload name different providers ({}); Istio allows one provider per workload",
            names.join(", ")
        );
        for (_, r) in &mut out {
            *r = Err(why.clone());
        }
    }
    out
}

/// What CUSTOM adds to one port's filters: the rules an authorizer is asked about (the marker's
/// shadow rules) and the provider that answers.
struct Custom<'o> {
    shadow: Policies,
    provider: Option<Resolved<'o>>,
}

/// Apply the CUSTOM policies of one port: fail-closed rules, and on TCP the rules of a provider
/// that cannot serve TCP, go into `deny` (and `shadow_deny`, which holds the enforced ones too).
fn apply<'o>(
    policies: &[Applied<'_>],
    for_tcp: bool,
    config: &MeshConfig,
    opts: &'o GenOptions,
    deny: &mut Option<Policies>,
    shadow_deny: &mut Option<Policies>,
) -> Custom<'o> {
    let mut shadow = Policies::new();
    let mut provider = None;
    let mut add_deny = |name: String, p: Policy| {
        deny.get_or_insert_default().insert(name.clone(), p.clone());
        if let Some(s) = shadow_deny {
            s.insert(name, p);
        }
    };
    for (a, resolved) in customs(policies, config, opts) {
        let resolved = match resolved {
            Ok(r) => r,
            Err(_) => {
                add_deny(fail_closed_rule(a.namespace, a.name), deny_all());
                continue;
            }
        };
        let ctx = RuleCtx {
            for_tcp,
            action: AuthzAction::Custom,
            trust_domain: &opts.trust_domain,
        };
        let asks = !for_tcp || tcp::serves_tcp(resolved.provider);
        for (i, rule) in a.policy.rules.iter().enumerate() {
            let Some(p) = ctx.rule(rule) else { continue };
            let name = format!(
                "{RULE_PREFIX}-{}-rule[{i}]",
                policy_name(a.namespace, a.name)
            );
            if asks {
                shadow.insert(name, p);
            } else {
                add_deny(name, p);
            }
        }
        if asks {
            provider = Some(resolved);
        }
    }
    Custom { shadow, provider }
}

/// Every policy filter of one port: the RBAC layers with CUSTOM's deny rules in, and CUSTOM's
/// marker and ext_authz filters.
pub(super) struct PortFilters<'o> {
    pub set: super::RbacSet,
    custom: Custom<'o>,
}

impl<'o> PortFilters<'o> {
    pub fn new(
        policies: &[Applied<'_>],
        for_tcp: bool,
        config: &MeshConfig,
        opts: &'o GenOptions,
    ) -> PortFilters<'o> {
        let mut set = super::translate(policies, for_tcp, &opts.trust_domain);
        let custom = apply(
            policies,
            for_tcp,
            config,
            opts,
            &mut set.deny,
            &mut set.shadow_deny,
        );
        PortFilters { set, custom }
    }

    /// CUSTOM's pair of filters, if a provider is asked about anything here.
    fn asked(&self) -> Option<&Resolved<'o>> {
        self.custom
            .provider
            .as_ref()
            .filter(|_| !self.custom.shadow.is_empty())
    }

    /// The HTTP filters in order: AUDIT, then CUSTOM's, then DENY and ALLOW.
    pub fn http(self) -> Vec<HttpFilter> {
        let custom = match self.asked() {
            Some(r) => vec![marker_filter(&self.custom.shadow), ext_authz_filter(r)],
            None => Vec::new(),
        };
        let mut out = self.set.http_filters();
        let at = usize::from(self.set.audit.is_some());
        out.splice(at..at, custom);
        out
    }

    /// The network filters in the same order, for a TCP port.
    pub fn network(self) -> Vec<Filter> {
        let custom = match self.asked() {
            Some(r) => tcp::filters(&self.custom.shadow, r),
            None => Vec::new(),
        };
        let mut out = self.set.network_filters();
        let at = usize::from(self.set.audit.is_some());
        out.splice(at..at, custom);
        out
    }
}

/// CUSTOM policies the server cannot serve, for `MeshSnapshot::problems()`.
pub fn refused(config: &MeshConfig, root_namespace: &str, opts: &GenOptions) -> Vec<Rejected> {
    let custom = |(_, ap): &(
        &meshd_model::ConfigObject,
        &meshd_model::security::AuthorizationPolicy,
    )| { ap.action == AuthzAction::Custom };
    if !config.authorization_policies().any(|p| custom(&p)) {
        return Vec::new();
    }
    // Why, and whether the policy fails closed whole (else it denies only on some TCP ports).
    let mut reasons = std::collections::BTreeMap::new();
    let mut note = |a: &Applied<'_>, why: String, whole: bool| {
        reasons
            .entry((a.namespace.to_string(), a.name.to_string()))
            .or_insert((why, whole));
    };
    // Unknown providers, whether or not a workload is selected.
    for (o, ap) in config.authorization_policies().filter(|p| custom(p)) {
        let a = Applied {
            namespace: o.meta.namespace(),
            name: &o.meta.name,
            policy: ap,
            dry_run: false,
        };
        for (a, r) in customs(&[a], config, opts) {
            if let Err(why) = r {
                note(&a, why, true);
            }
        }
    }
    // Conflicting providers, and HTTP providers on TCP ports, per workload.
    for w in &config.workloads {
        let applied = super::applicable(config, root_namespace, &w.namespace, &w.labels);
        let tcp = tcp_ports(config, root_namespace, w);
        for (a, r) in customs(&applied, config, opts) {
            match r {
                Err(why) => note(
                    &a,
                    format!("{why} (workload {}/{})", w.namespace, w.name),
                    true,
                ),
                Ok(r) if matches!(r.provider.kind, ExtAuthzKind::Http(_)) => {
                    if let Some(port) = tcp.iter().find(|p| may_match_port(a.policy, **p)) {
                        note(
                            &a,
                            format!(
                                "provider `{}` is an envoyExtAuthzHttp provider, which cannot authorize TCP: on TCP port {port} of workload {}/{} the policy denies the connections it matches",
                                r.provider.name, w.namespace, w.name
                            ),
                            false,
                        );
                    }
                }
                Ok(_) => {}
            }
        }
    }
    config
        .authorization_policies()
        .filter_map(|(o, _)| {
            let (why, whole) =
                reasons.remove(&(o.meta.namespace().to_string(), o.meta.name.clone()))?;
            Some(Rejected {
                file: o.source.file.clone(),
                line: o.source.line,
                kind: Some(o.kind()),
                namespace: Some(o.meta.namespace().to_string()),
                name: Some(o.meta.name.clone()),
                reason: if whole {
                    format!(
                        "{why}; the policy fails closed: it denies every request to the workloads it selects"
                    )
                } else {
                    why
                },
            })
        })
        .collect()
}

/// The non-HTTP ports `w` serves: its Sidecar's ingress ports when it declares any (as the
/// inbound listeners are built), else those of the services selecting it.
fn tcp_ports(
    config: &MeshConfig,
    root_namespace: &str,
    w: &meshd_model::registry::Workload,
) -> Vec<u32> {
    let sidecar = meshd_model::registry::sidecar_for(
        config.sidecars(),
        |(o, s)| (o.meta.namespace(), *s),
        root_namespace,
        &w.namespace,
        &w.labels,
    )
    .map(|(_, s)| s);
    if let Some(sc) = sidecar.filter(|sc| !sc.ingress.is_empty()) {
        let mut out: Vec<u32> = sc
            .ingress
            .iter()
            .filter(|i| {
                !meshd_model::registry::Protocol::detect(Some(&i.port.protocol), &i.port.name)
                    .is_http()
            })
            .map(|i| i.port.number)
            .collect();
        out.sort();
        out.dedup();
        return out;
    }
    let mut out: Vec<u32> = config
        .services
        .iter()
        .filter(|s| {
            s.namespace == w.namespace
                && s.selector
                    .as_ref()
                    .is_some_and(|sel| meshd_model::registry::selector_matches(sel, &w.labels))
        })
        .flat_map(|s| s.ports.iter())
        .filter(|p| !p.protocol.is_http())
        .map(|p| {
            w.ports
                .get(&p.name)
                .copied()
                .or(p.target_port)
                .unwrap_or(p.number)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a rule of `policy` can match a connection to `port` (a rule without `to`, or an
/// operation without `ports`, matches every port).
fn may_match_port(policy: &meshd_model::security::AuthorizationPolicy, port: u32) -> bool {
    let port = port.to_string();
    policy.rules.iter().any(|r| {
        r.to.is_empty()
            || r.to.iter().any(|t| {
                let op = &t.operation;
                (op.ports.is_empty() || op.ports.contains(&port)) && !op.not_ports.contains(&port)
            })
    })
}

fn deny_all() -> Policy {
    Policy {
        permissions: vec![super::matchers::perm_any()],
        principals: vec![super::matchers::id_any()],
        ..Default::default()
    }
}

/// The RBAC filter that evaluates the CUSTOM rules in its shadow: it never blocks, it records
/// the rule that matched under `istio_ext_authz_shadow_effective_policy_id`.
fn marker_filter(shadow: &Policies) -> HttpFilter {
    let cfg = HttpRbacConfig {
        rules: None,
        shadow_rules: Some(sorted(Action::Allow, shadow)),
        shadow_rules_stat_prefix: STAT_PREFIX.into(),
        rules_stat_prefix: String::new(),
    };
    HttpFilter {
        name: super::HTTP_RBAC.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::type_url(),
            value: cfg.encode_to_vec(),
        })),
        ..Default::default()
    }
}

/// Enables an ext_authz filter for what the marker RBAC filter `rbac_filter` (the namespace
/// of its dynamic metadata) matched: the key is its stat prefix + `shadow_effective_policy_id`.
fn marked_by(rbac_filter: &str) -> MetadataMatcher {
    MetadataMatcher {
        filter: rbac_filter.into(),
        path: vec![metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(format!(
                "{STAT_PREFIX}shadow_effective_policy_id"
            ))),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(prefix_matcher(
                RULE_PREFIX,
            ))),
        }),
        invert: false,
    }
}

fn ext_authz_filter(r: &Resolved<'_>) -> HttpFilter {
    let (services, fail_open, body, allowed_headers) = match &r.provider.kind {
        ExtAuthzKind::Http(h) => {
            let mut allowed = h.include_request_headers_in_check.clone();
            allowed.extend(h.include_headers_in_check.iter().cloned());
            let service = ea::HttpService {
                server_uri: Some(HttpUri {
                    uri: format!("http://{}", r.host),
                    timeout: timeout(&h.timeout),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                        r.cluster.clone(),
                    )),
                }),
                path_prefix: h.path_prefix.clone(),
                authorization_request: Some(ea::AuthorizationRequest {
                    headers_to_add: h
                        .include_additional_headers_in_check
                        .iter()
                        .map(|(k, v)| HeaderValue {
                            key: k.clone(),
                            value: v.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                authorization_response: Some(ea::AuthorizationResponse {
                    allowed_upstream_headers: headers(&h.headers_to_upstream_on_allow),
                    allowed_client_headers: headers(&h.headers_to_downstream_on_deny),
                    allowed_client_headers_on_success: headers(&h.headers_to_downstream_on_allow),
                    ..Default::default()
                }),
                ..Default::default()
            };
            (
                ea::ext_authz::Services::HttpService(service),
                h.fail_open,
                &h.include_request_body_in_check,
                headers(&allowed),
            )
        }
        ExtAuthzKind::Grpc(g) => (
            ea::ext_authz::Services::GrpcService(grpc_service(r, &g.timeout)),
            g.fail_open,
            &g.include_request_body_in_check,
            None,
        ),
    };
    let cfg = ea::ExtAuthz {
        services: Some(services),
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: fail_open,
        status_on_error: Some(HttpStatus {
            code: r.status_on_error as i32,
        }),
        with_request_body: body.as_ref().map(buffer),
        filter_enabled_metadata: Some(marked_by(super::HTTP_RBAC)),
        allowed_headers,
        ..Default::default()
    };
    HttpFilter {
        name: HTTP_EXT_AUTHZ.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: ea::ExtAuthz::type_url(),
            value: cfg.encode_to_vec(),
        })),
        ..Default::default()
    }
}

/// The provider's timeout, or Istio's default.
fn timeout(t: &Option<std::time::Duration>) -> Option<Duration> {
    Some(match t {
        Some(t) => Duration {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        },
        None => Duration {
            seconds: DEFAULT_TIMEOUT_SECS,
            nanos: 0,
        },
    })
}

/// A gRPC provider's service: its mesh cluster, through Envoy's own gRPC client.
fn grpc_service(r: &Resolved<'_>, t: &Option<std::time::Duration>) -> GrpcService {
    GrpcService {
        timeout: timeout(t),
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: r.cluster.clone(),
                authority: r.host.to_string(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn buffer(b: &RequestBody) -> ea::BufferSettings {
    ea::BufferSettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    }
}

/// Istio's header lists: exact, `prefix*` or `*suffix`, case-insensitive. Empty: Envoy's default.
fn headers(list: &[String]) -> Option<ListStringMatcher> {
    if list.is_empty() {
        return None;
    }
    Some(ListStringMatcher {
        patterns: list
            .iter()
            .map(|h| StringMatcher {
                ignore_case: true,
                ..if h.contains('*') {
                    istio_string(h)
                } else {
                    exact(h)
                }
            })
            .collect(),
    })
}

#[path = "authz_custom_tcp.rs"]
mod tcp;

#[cfg(test)]
#[path = "authz_custom_tests.rs"]
mod tests;
