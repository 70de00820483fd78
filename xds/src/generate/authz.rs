//! AuthorizationPolicy → Envoy RBAC filters on a workload's inbound path (HTTP:
//! `envoy.filters.http.rbac` ahead of the router; TCP: `envoy.filters.network.rbac` ahead of the
//! TCP proxy), with Istio's semantics:
//!
//! - **Scope**: a policy in the root namespace (`istio-system`) applies mesh-wide, one elsewhere to
//!   its namespace; a `selector` narrows either to the workloads whose labels match.
//! - **Order**: AUDIT (an RBAC filter with action LOG: it marks matching requests for the access
//!   log, never blocks), then DENY, then ALLOW. A request any DENY rule matches is refused; when
//!   at least one ALLOW policy applies, a request no ALLOW rule matches is refused too. `spec: {}`
//!   is an ALLOW policy without rules, so it denies everything; `rules: [{}]` matches everything.
//! - **A rule** matches when one of its `from` sources, one of its `to` operations and all its
//!   `when` conditions match (a missing part matches anything). Within a source or an operation
//!   every set field must match; a field matches when one of its values does, a `not` field when
//!   none of its values does. Each rule is one Envoy RBAC policy named
//!   `ns[<namespace>]-policy[<name>]-rule[<index>]`.
//! - **Values**: principals are SPIFFE IDs without `spiffe://` (`cluster.local/ns/x/sa/y`) and
//!   match the peer certificate's URI SAN; namespaces match the `/ns/<namespace>/` part of it.
//!   Strings take `*` alone (present), as a prefix (`*suffix`) or as a suffix (`prefix*`); hosts
//!   compare case-insensitively.
//! - **TCP ports**: HTTP-only fields (hosts, methods, paths, `request.*` conditions) cannot be
//!   evaluated on a TCP connection. An ALLOW rule using one is dropped (allows less); in a DENY or
//!   AUDIT rule the HTTP-only field is ignored (the rule denies more).
//! - **Dry run**: a policy annotated `istio.io/dry-run: "true"` goes into the filter's shadow
//!   rules (with the enforced ones, so the shadow shows what would happen with it in force):
//!   Envoy evaluates and counts it (`rbac.istio_dry_run_deny.shadow_denied`, ...) but never
//!   acts on it.
//! - **Fail closed**: a policy with an unsupported or invalid field (see
//!   `AuthorizationPolicy::problems`, reported by `meshd analyze` and in `/debug/configz`)
//!   becomes a deny-all rule (`ns[..]-policy[..]-fail-closed`) in the DENY filter of every
//!   workload it selects, whatever its action.
//!
//! Everything here is pure: config in, Envoy protos out.

use super::{GenOptions, Index};
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use meshd_model::MeshConfig;
use meshd_model::networking::Labels;
use meshd_model::registry::{Workload, selector_matches};
use meshd_model::security::{
    AuthorizationPolicy, AuthzAction, ConditionKey, Operation, Rule, Source,
};
use prost::{Message, Name};
use std::collections::BTreeMap;

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// The policy filters for one inbound port of a workload.
#[derive(Default)]
pub struct InboundPolicy {
    pub http_filters: Vec<HttpFilter>,
    pub network_filters: Vec<Filter>,
}

pub fn inbound_policy(
    index: &Index,
    workload: &Workload,
    _port: u32,
    http: bool,
    opts: &GenOptions,
) -> InboundPolicy {
    let policies = applicable(
        &index.config,
        &index.root_namespace,
        &workload.namespace,
        &workload.labels,
    );
    let set = translate(&policies, !http, &opts.trust_domain);
    if http {
        InboundPolicy {
            http_filters: set.http_filters(),
            ..Default::default()
        }
    } else {
        InboundPolicy {
            network_filters: set.network_filters(),
            ..Default::default()
        }
    }
}

/// The policy filters of a gateway (a workload in `namespace` with `labels`): `http_filters`
/// for its HTTP servers' connection manager, `network_filters` ahead of its TCP and TLS
/// passthrough proxies. Istio enforces AuthorizationPolicies on gateways as on sidecars.
pub fn gateway_policy(
    index: &Index,
    namespace: &str,
    labels: &Labels,
    opts: &GenOptions,
) -> InboundPolicy {
    let policies = applicable(&index.config, &index.root_namespace, namespace, labels);
    InboundPolicy {
        http_filters: translate(&policies, false, &opts.trust_domain).http_filters(),
        network_filters: translate(&policies, true, &opts.trust_domain).network_filters(),
    }
}

/// One AuthorizationPolicy in force for a workload.
#[derive(Clone, Copy, Debug)]
pub struct Applied<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub policy: &'a AuthorizationPolicy,
    /// Annotated `istio.io/dry-run: "true"`: evaluated as Envoy shadow rules (counted in the
    /// `istio_dry_run_*` stats), never enforced.
    pub dry_run: bool,
}

pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The policies that apply to a workload (in `namespace`, with `labels`): those of its
/// namespace and of the root namespace (mesh-wide) whose selector is absent or matches its
/// labels, in (namespace, name) order.
pub fn applicable<'a>(
    config: &'a MeshConfig,
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> Vec<Applied<'a>> {
    config
        .authorization_policies()
        .filter(|(o, ap)| {
            let ns = o.meta.namespace();
            (ns == namespace || ns == root_namespace)
                && ap
                    .selector
                    .as_ref()
                    .is_none_or(|s| selector_matches(&s.labels, labels))
        })
        .map(|(o, ap)| Applied {
            namespace: o.meta.namespace(),
            name: &o.meta.name,
            policy: ap,
            dry_run: o
                .meta
                .annotations
                .get(DRY_RUN_ANNOTATION)
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        })
        .collect()
}

/// RBAC policies by name; a `BTreeMap` so the encoded filter is byte-for-byte stable.
pub type Policies = BTreeMap<String, Policy>;

/// The RBAC filters for one port, in Envoy's evaluation order. `None`: no such filter. An
/// empty `allow` (ALLOW policies apply, none has a rule that can match) denies everything.
/// With dry-run policies, `shadow_*` holds what the filter would enforce with them in force
/// (the enforced policies plus the dry-run ones), evaluated but never acted on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RbacSet {
    pub audit: Option<Policies>,
    pub deny: Option<Policies>,
    pub allow: Option<Policies>,
    pub shadow_deny: Option<Policies>,
    pub shadow_allow: Option<Policies>,
}

pub fn policy_name(namespace: &str, name: &str) -> String {
    format!("ns[{namespace}]-policy[{name}]")
}

/// The deny-all rule a policy meshd cannot enforce as written turns into.
pub fn fail_closed_rule(namespace: &str, name: &str) -> String {
    format!("{}-fail-closed", policy_name(namespace, name))
}

/// Translate the policies that apply to one port (`for_tcp`: a TCP port, else HTTP).
pub fn translate(policies: &[Applied<'_>], for_tcp: bool, trust_domain: &str) -> RbacSet {
    let mut set = RbacSet::default();
    let (mut dry_deny, mut dry_allow): (Option<Policies>, Option<Policies>) = (None, None);
    for a in policies {
        // AUDIT never blocks, so a dry-run AUDIT policy is simply an AUDIT policy.
        let dry_run = a.dry_run && a.policy.action != AuthzAction::Audit;
        if !a.policy.problems().is_empty() {
            let deny = if dry_run {
                &mut dry_deny
            } else {
                &mut set.deny
            };
            deny.get_or_insert_default().insert(
                fail_closed_rule(a.namespace, a.name),
                Policy {
                    permissions: vec![perm_any()],
                    principals: vec![id_any()],
                    ..Default::default()
                },
            );
            continue;
        }
        let target = match (a.policy.action, dry_run) {
            (AuthzAction::Allow, false) => &mut set.allow,
            (AuthzAction::Allow, true) => &mut dry_allow,
            (AuthzAction::Deny, false) => &mut set.deny,
            (AuthzAction::Deny, true) => &mut dry_deny,
            (AuthzAction::Audit, _) => &mut set.audit,
            (AuthzAction::Custom, _) => continue, // has problems: failed closed above
        };
        let target = target.get_or_insert_default();
        for (i, rule) in a.policy.rules.iter().enumerate() {
            let ctx = RuleCtx {
                for_tcp,
                action: a.policy.action,
                trust_domain,
            };
            if let Some(p) = ctx.rule(rule) {
                target.insert(format!("{}-rule[{i}]", policy_name(a.namespace, a.name)), p);
            }
        }
    }
    // A DENY or AUDIT filter without rules would do nothing; an empty ALLOW filter denies all.
    set.deny = set.deny.filter(|p| !p.is_empty());
    set.audit = set.audit.filter(|p| !p.is_empty());
    let shadow = |enforced: &Option<Policies>, dry: Option<Policies>| {
        dry.map(|mut dry| {
            dry.extend(
                enforced
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            dry
        })
    };
    set.shadow_deny = shadow(&set.deny, dry_deny).filter(|p| !p.is_empty());
    set.shadow_allow = shadow(&set.allow, dry_allow);
    set
}

/// One RBAC filter: what it enforces (`None`: nothing, every request passes) and what it
/// evaluates in the shadow.
struct FilterRules<'a> {
    action: Action,
    rules: Option<&'a Policies>,
    shadow: Option<&'a Policies>,
}

impl RbacSet {
    fn in_order(&self) -> impl Iterator<Item = FilterRules<'_>> {
        [
            (Action::Log, &self.audit, &None),
            (Action::Deny, &self.deny, &self.shadow_deny),
            (Action::Allow, &self.allow, &self.shadow_allow),
        ]
        .into_iter()
        .filter(|(_, rules, shadow)| rules.is_some() || shadow.is_some())
        .map(|(action, rules, shadow)| FilterRules {
            action,
            rules: rules.as_ref(),
            shadow: shadow.as_ref(),
        })
    }

    pub fn http_filters(&self) -> Vec<HttpFilter> {
        self.in_order()
            .map(|f| HttpFilter {
                name: HTTP_RBAC.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(http_rbac_any(&f))),
                ..Default::default()
            })
            .collect()
    }

    pub fn network_filters(&self) -> Vec<Filter> {
        self.in_order()
            .map(|f| Filter {
                name: NETWORK_RBAC.into(),
                config_type: Some(filter::ConfigType::TypedConfig(network_rbac_any(&f))),
            })
            .collect()
    }
}

// ---------- encoding ----------
//
// `envoy.config.rbac.v3.RBAC.policies` is a `map<string, Policy>`, which prost models as a
// `HashMap`: its encoding order would change from one generation to the next, and with it the
// content hash that decides whether a listener is resent. These mirror the RBAC filter messages
// with the map as its wire-identical form, a repeated entry message, in name order.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i32)]
enum Action {
    Allow = 0,
    Deny = 1,
    Log = 2,
}

impl Action {
    /// In stat names: `http.<listener>.rbac.<name>.denied`, `tcp.<name>.rbac.denied`.
    fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Log => "audit",
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct PolicyEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Policy>,
}

/// `envoy.config.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, Message)]
struct SortedRbac {
    #[prost(int32, tag = "1")]
    action: i32,
    #[prost(message, repeated, tag = "2")]
    policies: Vec<PolicyEntry>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC` (the fields we set).
#[derive(Clone, PartialEq, Message)]
struct HttpRbacConfig {
    #[prost(message, optional, tag = "1")]
    rules: Option<SortedRbac>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<SortedRbac>,
    #[prost(string, tag = "3")]
    shadow_rules_stat_prefix: String,
    #[prost(string, tag = "6")]
    rules_stat_prefix: String,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC` (the fields we set).
#[derive(Clone, PartialEq, Message)]
struct NetworkRbacConfig {
    #[prost(message, optional, tag = "1")]
    rules: Option<SortedRbac>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<SortedRbac>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
    #[prost(string, tag = "5")]
    shadow_rules_stat_prefix: String,
}

fn sorted(action: Action, policies: &Policies) -> SortedRbac {
    SortedRbac {
        action: action as i32,
        policies: policies
            .iter()
            .map(|(k, v)| PolicyEntry {
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect(),
    }
}

/// The stat prefix for dry-run results: `http.<listener>.rbac.istio_dry_run_allow.shadow_denied`.
fn shadow_stat_prefix(f: &FilterRules<'_>) -> String {
    match f.shadow {
        Some(_) => format!("istio_dry_run_{}", f.action.name()),
        None => String::new(),
    }
}

fn http_rbac_any(f: &FilterRules<'_>) -> Any {
    // `rules` is present whenever policies of the action are enforced, even none: an RBAC
    // filter without rules allows everything, while ALLOW with no policy denies everything.
    let cfg = HttpRbacConfig {
        rules: f.rules.map(|p| sorted(f.action, p)),
        shadow_rules: f.shadow.map(|p| sorted(f.action, p)),
        shadow_rules_stat_prefix: shadow_stat_prefix(f),
        rules_stat_prefix: f.action.name().into(),
    };
    Any {
        type_url: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::type_url(),
        value: cfg.encode_to_vec(),
    }
}

fn network_rbac_any(f: &FilterRules<'_>) -> Any {
    let cfg = NetworkRbacConfig {
        rules: f.rules.map(|p| sorted(f.action, p)),
        shadow_rules: f.shadow.map(|p| sorted(f.action, p)),
        stat_prefix: format!("tcp.{}.", f.action.name()),
        shadow_rules_stat_prefix: shadow_stat_prefix(f),
    };
    Any {
        type_url: envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac::type_url(),
        value: cfg.encode_to_vec(),
    }
}

// ---------- rules ----------

struct RuleCtx<'a> {
    for_tcp: bool,
    action: AuthzAction,
    trust_domain: &'a str,
}

/// A field that cannot be evaluated on this port (HTTP-only on TCP).
struct HttpOnly;

impl RuleCtx<'_> {
    /// One Istio rule → one RBAC policy; `None` when an ALLOW rule uses HTTP-only fields on a
    /// TCP port (the rule is dropped).
    fn rule(&self, rule: &Rule) -> Option<Policy> {
        self.try_rule(rule).ok()
    }

    /// For a field that cannot be evaluated here: ALLOW drops the rule (`Err`), DENY and AUDIT
    /// drop the field (`Ok(false)`: skip it).
    fn usable(&self, http_only: bool) -> Result<bool, HttpOnly> {
        if !(self.for_tcp && http_only) {
            return Ok(true);
        }
        match self.action {
            AuthzAction::Allow => Err(HttpOnly),
            _ => Ok(false),
        }
    }

    fn try_rule(&self, rule: &Rule) -> Result<Policy, HttpOnly> {
        // `when` conditions: on the principal (who, where from) or the permission (what).
        let mut base_ids = Vec::new();
        let mut base_perms = Vec::new();
        for cond in &rule.when {
            let key = cond.parsed_key();
            if !self.usable(key.http_only())? {
                continue;
            }
            let (vals, nots) = (&cond.values, &cond.not_values);
            match key {
                ConditionKey::RequestHeader(name) => {
                    base_ids.extend(ids(vals, nots, |v| id_header(header(&name, v, false))))
                }
                ConditionKey::SourceIp => base_ids.extend(ids(vals, nots, |v| {
                    id(principal::Identifier::DirectRemoteIp(cidr(v)))
                })),
                ConditionKey::RemoteIp => base_ids.extend(ids(vals, nots, |v| {
                    id(principal::Identifier::RemoteIp(cidr(v)))
                })),
                ConditionKey::SourceNamespace => base_ids.extend(ids(vals, nots, id_namespace)),
                ConditionKey::SourcePrincipal => {
                    base_ids.extend(ids(vals, nots, |v| self.id_principal(v)))
                }
                ConditionKey::DestinationIp => base_perms.extend(perms(vals, nots, |v| {
                    perm(permission::Rule::DestinationIp(cidr(v)))
                })),
                ConditionKey::DestinationPort => base_perms.extend(perms(vals, nots, perm_port)),
                ConditionKey::ConnectionSni => base_perms.extend(perms(vals, nots, |v| {
                    perm(permission::Rule::RequestedServerName(istio_string(v)))
                })),
                // Reported by `problems`: such a policy fails closed before it gets here.
                ConditionKey::RequestAuth(_)
                | ConditionKey::EnvoyFilter(_)
                | ConditionKey::Unknown(_) => {}
            }
        }
        let principals = if rule.from.is_empty() {
            vec![id_and(base_ids)]
        } else {
            rule.from
                .iter()
                .map(|f| {
                    let mut and = self.source(&f.source)?;
                    and.extend(base_ids.iter().cloned());
                    Ok(id_and(and))
                })
                .collect::<Result<_, _>>()?
        };
        let permissions = if rule.to.is_empty() {
            vec![perm_and(base_perms)]
        } else {
            rule.to
                .iter()
                .map(|t| {
                    let mut and = self.operation(&t.operation)?;
                    and.extend(base_perms.iter().cloned());
                    Ok(perm_and(and))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Policy {
            permissions,
            principals,
            ..Default::default()
        })
    }

    fn source(&self, s: &Source) -> Result<Vec<Principal>, HttpOnly> {
        let mut and = Vec::new();
        and.extend(ids(&s.principals, &s.not_principals, |v| {
            self.id_principal(v)
        }));
        and.extend(ids(&s.namespaces, &s.not_namespaces, id_namespace));
        // `namespace/name` (checked by validation) is the principal `cluster.local/ns/…/sa/…`.
        and.extend(ids(&s.service_accounts, &s.not_service_accounts, |v| {
            self.id_principal(&Source::service_account_principal(v).unwrap_or_default())
        }));
        and.extend(ids(&s.ip_blocks, &s.not_ip_blocks, |v| {
            id(principal::Identifier::DirectRemoteIp(cidr(v)))
        }));
        and.extend(ids(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |v| {
            id(principal::Identifier::RemoteIp(cidr(v)))
        }));
        // requestPrincipals: reported by `problems` (no RequestAuthentication support).
        if !(s.request_principals.is_empty() && s.not_request_principals.is_empty()) {
            self.usable(true)?;
        }
        Ok(and)
    }

    fn operation(&self, o: &Operation) -> Result<Vec<Permission>, HttpOnly> {
        let mut and = Vec::new();
        if self.usable(!(o.hosts.is_empty() && o.not_hosts.is_empty()))? {
            and.extend(perms(&o.hosts, &o.not_hosts, |v| {
                perm_header(header(":authority", v, true))
            }));
        }
        if self.usable(!(o.methods.is_empty() && o.not_methods.is_empty()))? {
            and.extend(perms(&o.methods, &o.not_methods, |v| {
                perm_header(header(":method", v, false))
            }));
        }
        if self.usable(!(o.paths.is_empty() && o.not_paths.is_empty()))? {
            and.extend(perms(&o.paths, &o.not_paths, |v| {
                perm(permission::Rule::UrlPath(PathMatcher {
                    rule: Some(path_matcher::Rule::Path(istio_string(v))),
                }))
            }));
        }
        and.extend(perms(&o.ports, &o.not_ports, perm_port));
        Ok(and)
    }

    /// `cluster.local/ns/x/sa/y` (or with `*`) against the peer certificate's URI SAN. Istio
    /// treats the trust domain `cluster.local` in a policy as the mesh's own, so with another
    /// trust domain such a value matches both.
    fn id_principal(&self, v: &str) -> Principal {
        let one = |v: &str| {
            let m = if v == "*" {
                regex(".+")
            } else if let Some(suffix) = v.strip_prefix('*') {
                suffix_matcher(suffix)
            } else if let Some(prefix) = v.strip_suffix('*') {
                prefix_matcher(&format!("spiffe://{prefix}"))
            } else {
                exact(&format!("spiffe://{v}"))
            };
            authenticated(m)
        };
        match v.strip_prefix("cluster.local/") {
            Some(rest) if self.trust_domain != "cluster.local" => {
                id_or(vec![one(v), one(&format!("{}/{rest}", self.trust_domain))])
            }
            _ => one(v),
        }
    }
}

// ---------- matchers ----------

fn exact(v: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Exact(v.into()))
}

fn prefix_matcher(v: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Prefix(v.into()))
}

fn suffix_matcher(v: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Suffix(v.into()))
}

fn regex(re: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
        regex: re.into(),
        ..Default::default()
    }))
}

fn string(p: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

/// Istio's string value: `*` (anything non-empty), `*suffix`, `prefix*` or exact.
fn istio_string(v: &str) -> StringMatcher {
    if v == "*" {
        regex(".+")
    } else if let Some(s) = v.strip_prefix('*') {
        suffix_matcher(s)
    } else if let Some(p) = v.strip_suffix('*') {
        prefix_matcher(p)
    } else {
        exact(v)
    }
}

/// A header value in Istio's forms; `*` means the header is present.
fn header(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    use header_matcher::HeaderMatchSpecifier as S;
    let spec = if v == "*" {
        S::PresentMatch(true)
    } else {
        let mut m = istio_string(v);
        m.ignore_case = ignore_case;
        S::StringMatch(m)
    };
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A namespace (`*` wildcards allowed) as the `/ns/<namespace>/` part of the peer's SPIFFE ID.
fn id_namespace(v: &str) -> Principal {
    let ns: Vec<String> = v.split('*').map(regex_escape).collect();
    authenticated(regex(&format!(".*/ns/{}/.*", ns.join(".*"))))
}

fn cidr(v: &str) -> CidrRange {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, len.parse().unwrap_or(0)),
        None => (v, if v.contains(':') { 128 } else { 32 }),
    };
    CidrRange {
        address_prefix: ip.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

fn perm_port(v: &str) -> Permission {
    perm(permission::Rule::DestinationPort(v.parse().unwrap_or(0)))
}

// ---------- principal / permission trees ----------

fn id(i: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}

fn id_any() -> Principal {
    id(principal::Identifier::Any(true))
}

fn authenticated(m: StringMatcher) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

fn id_header(h: HeaderMatcher) -> Principal {
    id(principal::Identifier::Header(h))
}

fn id_and(mut v: Vec<Principal>) -> Principal {
    match v.len() {
        0 => id_any(),
        1 => v.remove(0),
        _ => id(principal::Identifier::AndIds(principal::Set { ids: v })),
    }
}

fn id_or(mut v: Vec<Principal>) -> Principal {
    match v.len() {
        1 => v.remove(0),
        _ => id(principal::Identifier::OrIds(principal::Set { ids: v })),
    }
}

/// `values` → one of them; `not_values` → none of them (0, 1 or 2 principals to AND).
fn ids(values: &[String], not_values: &[String], f: impl Fn(&str) -> Principal) -> Vec<Principal> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(id_or(values.iter().map(|v| f(v)).collect()));
    }
    if !not_values.is_empty() {
        out.push(id(principal::Identifier::NotId(Box::new(id_or(
            not_values.iter().map(|v| f(v)).collect(),
        )))));
    }
    out
}

fn perm(r: permission::Rule) -> Permission {
    Permission { rule: Some(r) }
}

fn perm_any() -> Permission {
    perm(permission::Rule::Any(true))
}

fn perm_header(h: HeaderMatcher) -> Permission {
    perm(permission::Rule::Header(h))
}

fn perm_and(mut v: Vec<Permission>) -> Permission {
    match v.len() {
        0 => perm_any(),
        1 => v.remove(0),
        _ => perm(permission::Rule::AndRules(permission::Set { rules: v })),
    }
}

fn perm_or(mut v: Vec<Permission>) -> Permission {
    match v.len() {
        1 => v.remove(0),
        _ => perm(permission::Rule::OrRules(permission::Set { rules: v })),
    }
}

fn perms(
    values: &[String],
    not_values: &[String],
    f: impl Fn(&str) -> Permission,
) -> Vec<Permission> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(perm_or(values.iter().map(|v| f(v)).collect()));
    }
    if !not_values.is_empty() {
        out.push(perm(permission::Rule::NotRule(Box::new(perm_or(
            not_values.iter().map(|v| f(v)).collect(),
        )))));
    }
    out
}

#[cfg(test)]
use super::authz_cases as cases;

#[cfg(test)]
#[path = "security_tests.rs"]
mod security_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{any_to_json, message_to_json};
    use meshd_model::{MeshConfig, parse_file};
    use serde_json::{Value, json};

    fn mesh(yaml: &str) -> MeshConfig {
        let file = parse_file("authz.yaml", yaml).unwrap();
        assert!(file.rejected.is_empty(), "{:?}", file.rejected);
        MeshConfig::assemble([&file])
    }

    fn policy_doc(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{spec}}}\n---\n"
        )
    }

    fn server() -> Workload {
        Workload {
            name: "server".into(),
            namespace: "authz".into(),
            address: "10.44.0.20".into(),
            labels: [("app".to_string(), "server".to_string())].into(),
            service_account: "server".into(),
            ports: Default::default(),
        }
    }

    fn set_for(config: &MeshConfig, w: &Workload, tcp: bool) -> RbacSet {
        translate(
            &applicable(config, "istio-system", &w.namespace, &w.labels),
            tcp,
            "cluster.local",
        )
    }

    fn names(p: &Option<Policies>) -> Option<Vec<&str>> {
        p.as_ref().map(|p| p.keys().map(String::as_str).collect())
    }

    /// The table: every supported field, Istio YAML → Envoy RBAC policy.
    #[test]
    fn translation_table() {
        let mut seen = std::collections::BTreeSet::new();
        for case in cases::CASES {
            assert!(seen.insert(case.name), "duplicate case {}", case.name);
            let spec = format!("selector: {{matchLabels: {{app: server}}}}, {}", case.spec);
            let config = mesh(&policy_doc("authz", case.name, &spec));
            assert!(
                config.rejected.is_empty(),
                "{}: {:?}",
                case.name,
                config.rejected
            );
            let set = set_for(&config, &server(), false);
            let rule = format!("ns[authz]-policy[{}]-rule[0]", case.name);
            let allow = set.allow.as_ref().expect(case.name);
            let got = message_to_json(allow.get(&rule).expect(case.name));
            let want: Value = serde_json::from_str(case.envoy)
                .unwrap_or_else(|e| panic!("{}: bad expected JSON: {e}", case.name));
            assert_eq!(got, want, "{}:\n got {got}\nwant {want}", case.name);
            assert_eq!((set.deny, set.audit), (None, None), "{}", case.name);
        }
    }

    #[test]
    fn a_cluster_local_principal_also_matches_the_mesh_trust_domain() {
        let config = mesh(&policy_doc(
            "authz",
            "p",
            "rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]}]",
        ));
        let set = translate(
            &applicable(&config, "istio-system", "authz", &server().labels),
            false,
            "example.org",
        );
        let got = message_to_json(&set.allow.unwrap()["ns[authz]-policy[p]-rule[0]"]);
        assert_eq!(
            got["principals"][0]["or_ids"]["ids"],
            json!([
                {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}},
                {"authenticated": {"principal_name": {"exact": "spiffe://example.org/ns/a/sa/b"}}}
            ])
        );
    }

    #[test]
    fn spec_empty_denies_all_and_an_empty_rule_allows_all() {
        let config = mesh(&policy_doc("authz", "deny-all", ""));
        let set = set_for(&config, &server(), false);
        assert_eq!(set.allow, Some(Policies::new()), "ALLOW without rules");
        let filters = set.http_filters();
        assert_eq!(filters.len(), 1);
        let Some(http_filter::ConfigType::TypedConfig(any)) = &filters[0].config_type else {
            panic!("typed config")
        };
        // `rules` present and empty: Envoy denies every request.
        assert_eq!(
            any_to_json(any),
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                   "rules": {}, "rules_stat_prefix": "allow"})
        );

        let config = mesh(&policy_doc("authz", "allow-all", "rules: [{}]"));
        let set = set_for(&config, &server(), false);
        assert_eq!(
            names(&set.allow),
            Some(vec!["ns[authz]-policy[allow-all]-rule[0]"])
        );
        // A DENY policy without rules does nothing, so no filter at all.
        let config = mesh(&policy_doc("authz", "nothing", "action: DENY"));
        assert_eq!(set_for(&config, &server(), false), RbacSet::default());
    }

    #[test]
    fn filters_run_audit_then_deny_then_allow() {
        let yaml = [
            policy_doc(
                "authz",
                "allow",
                "rules: [{to: [{operation: {methods: [GET]}}]}]",
            ),
            policy_doc(
                "authz",
                "deny",
                "action: DENY, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]",
            ),
            policy_doc("authz", "audit", "action: AUDIT, rules: [{}]"),
        ]
        .concat();
        let set = set_for(&mesh(&yaml), &server(), false);
        let actions: Vec<Value> = set
            .http_filters()
            .iter()
            .map(|f| {
                assert_eq!(f.name, HTTP_RBAC);
                let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    panic!()
                };
                let j = any_to_json(any);
                json!([
                    j["rules"]["action"],
                    j["rules"]["policies"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .collect::<Vec<_>>()
                ])
            })
            .collect();
        assert_eq!(
            actions,
            vec![
                json!(["LOG", ["ns[authz]-policy[audit]-rule[0]"]]),
                json!(["DENY", ["ns[authz]-policy[deny]-rule[0]"]]),
                // ALLOW is the enum's default, so proto3 JSON leaves it out.
                json!([null, ["ns[authz]-policy[allow]-rule[0]"]]),
            ]
        );
        let tcp: Vec<String> = set
            .network_filters()
            .iter()
            .map(|f| {
                let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    panic!()
                };
                any_to_json(any)["stat_prefix"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(tcp, ["tcp.audit.", "tcp.deny.", "tcp.allow."]);
    }

    #[test]
    fn http_only_fields_on_a_tcp_port() {
        // ALLOW: a rule with an HTTP-only field is dropped (allows less); the others stay.
        let yaml = policy_doc(
            "authz",
            "allow",
            "rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [a]}}]}, {when: [{key: 'request.headers[x]', values: [y]}]}]",
        );
        let set = set_for(&mesh(&yaml), &server(), true);
        assert_eq!(
            names(&set.allow),
            Some(vec!["ns[authz]-policy[allow]-rule[1]"])
        );
        // Only HTTP-only rules: the ALLOW filter stays, empty, and denies all.
        let yaml = policy_doc(
            "authz",
            "allow",
            "rules: [{to: [{operation: {paths: [/x]}}]}]",
        );
        let set = set_for(&mesh(&yaml), &server(), true);
        assert_eq!(set.allow, Some(Policies::new()));
        // DENY: the HTTP-only field is ignored (denies more).
        let yaml = policy_doc(
            "authz",
            "deny",
            "action: DENY, rules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {methods: [POST], ports: ['9000']}}]}]",
        );
        let set = set_for(&mesh(&yaml), &server(), true);
        let got = message_to_json(&set.deny.unwrap()["ns[authz]-policy[deny]-rule[0]"]);
        assert_eq!(
            got,
            json!({"permissions": [{"destination_port": 9000}],
                   "principals": [{"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/a/.*"}}}}]})
        );
    }

    #[test]
    fn a_policy_meshd_cannot_enforce_fails_closed_for_what_it_selects() {
        let yaml = [
            policy_doc(
                "authz",
                "jwt",
                "selector: {matchLabels: {app: server}}, rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
            ),
            policy_doc("authz", "ext", "action: CUSTOM, provider: {name: opa}, rules: [{}]"),
            policy_doc(
                "authz",
                "claims",
                "action: DENY, selector: {matchLabels: {app: other}}, rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]",
            ),
        ]
        .concat();
        let config = mesh(&yaml);
        let reported: Vec<(&str, bool)> = config
            .rejected
            .iter()
            .map(|r| {
                (
                    r.name.as_deref().unwrap(),
                    r.reason.contains("fails closed"),
                )
            })
            .collect();
        assert_eq!(reported, [("claims", true), ("ext", true), ("jwt", true)]);
        assert_eq!(
            config.authorization_policies().count(),
            3,
            "kept, to fail closed"
        );
        for tcp in [false, true] {
            let set = set_for(&config, &server(), tcp);
            assert_eq!(
                names(&set.deny),
                Some(vec![
                    "ns[authz]-policy[ext]-fail-closed",
                    "ns[authz]-policy[jwt]-fail-closed"
                ]),
                "the `claims` policy selects another workload"
            );
            let rule = &set.deny.unwrap()["ns[authz]-policy[jwt]-fail-closed"];
            assert_eq!(
                message_to_json(rule),
                json!({"permissions": [{"any": true}], "principals": [{"any": true}]})
            );
        }
    }

    #[test]
    fn scope_root_namespace_namespace_and_selector() {
        let yaml = [
            policy_doc(
                "istio-system",
                "mesh-wide",
                "action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]",
            ),
            policy_doc(
                "istio-system",
                "mesh-selected",
                "selector: {matchLabels: {app: server}}, action: AUDIT, rules: [{}]",
            ),
            policy_doc("authz", "ns-wide", "rules: [{}]"),
            policy_doc(
                "authz",
                "selected",
                "selector: {matchLabels: {app: server}}, rules: [{}]",
            ),
            policy_doc(
                "authz",
                "other-app",
                "selector: {matchLabels: {app: other}}, rules: [{}]",
            ),
            policy_doc("elsewhere", "other-ns", "rules: [{}]"),
        ]
        .concat();
        let config = mesh(&yaml);
        let got: Vec<&str> = applicable(&config, "istio-system", "authz", &server().labels)
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(got, ["ns-wide", "selected", "mesh-selected", "mesh-wide"]);
        let mut other = server();
        other.labels = [("app".to_string(), "other".to_string())].into();
        let got: Vec<&str> = applicable(&config, "istio-system", "authz", &other.labels)
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(got, ["ns-wide", "other-app", "mesh-wide"]);
    }

    #[test]
    fn dry_run_policies_become_shadow_rules() {
        let dry = |name: &str, spec: &str| {
            policy_doc("authz", name, spec).replacen(
                "namespace: authz}",
                "namespace: authz, annotations: {istio.io/dry-run: \"true\"}}",
                1,
            )
        };
        let yaml = [
            policy_doc("authz", "allow-all", "rules: [{}]"),
            dry(
                "deny-b",
                "action: DENY, rules: [{from: [{source: {namespaces: [outside]}}]}]",
            ),
        ]
        .concat();
        let set = set_for(&mesh(&yaml), &server(), false);
        assert_eq!(set.deny, None, "nothing denied for real");
        assert_eq!(
            names(&set.shadow_deny),
            Some(vec!["ns[authz]-policy[deny-b]-rule[0]"])
        );
        assert_eq!(set.shadow_allow, None);
        let rendered: Vec<Value> = set
            .http_filters()
            .iter()
            .map(|f| {
                let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    panic!()
                };
                let mut j = any_to_json(any);
                for k in ["rules", "shadow_rules"] {
                    if let Some(r) = j.get_mut(k) {
                        r["policies"] = json!(r["policies"].as_object().map(|o| o.len()));
                    }
                }
                j
            })
            .collect();
        assert_eq!(
            rendered,
            [
                json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                       "shadow_rules": {"action": "DENY", "policies": 1},
                       "shadow_rules_stat_prefix": "istio_dry_run_deny",
                       "rules_stat_prefix": "deny"}),
                json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                       "rules": {"policies": 1}, "rules_stat_prefix": "allow"}),
            ]
        );

        // A dry-run `spec: {}`: the shadow denies all, the real filter enforces nothing; the
        // shadow carries the enforced ALLOW rules too.
        let yaml = [
            policy_doc(
                "authz",
                "allow-get",
                "rules: [{to: [{operation: {methods: [GET]}}]}]",
            ),
            dry("lockdown", ""),
        ]
        .concat();
        let set = set_for(&mesh(&yaml), &server(), false);
        assert_eq!(
            names(&set.allow),
            Some(vec!["ns[authz]-policy[allow-get]-rule[0]"])
        );
        assert_eq!(
            names(&set.shadow_allow),
            Some(vec!["ns[authz]-policy[allow-get]-rule[0]"])
        );
        let yaml = dry("lockdown", "");
        let set = set_for(&mesh(&yaml), &server(), true);
        assert_eq!(
            (set.allow.clone(), set.shadow_allow.clone()),
            (None, Some(Policies::new()))
        );
        let Some(filter::ConfigType::TypedConfig(any)) = &set.network_filters()[0].config_type
        else {
            panic!()
        };
        assert_eq!(
            any_to_json(any),
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                   "shadow_rules": {}, "stat_prefix": "tcp.allow.",
                   "shadow_rules_stat_prefix": "istio_dry_run_allow"})
        );
    }

    #[test]
    fn encoding_is_stable_and_decodes_as_envoy_rbac() {
        use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
        let mut yaml = String::new();
        for i in 0..20 {
            yaml.push_str(&policy_doc(
                "authz",
                &format!("p{i}"),
                "rules: [{}, {from: [{source: {namespaces: [x]}}]}]",
            ));
        }
        let config = mesh(&yaml);
        let encode = || {
            let set = set_for(&config, &server(), false);
            let Some(http_filter::ConfigType::TypedConfig(any)) =
                set.http_filters().remove(0).config_type
            else {
                panic!()
            };
            any
        };
        let first = encode();
        for _ in 0..5 {
            assert_eq!(encode(), first, "same policies, same bytes");
        }
        let decoded = HttpRbac::decode(first.value.as_slice()).unwrap();
        let rules = decoded.rules.unwrap();
        assert_eq!(rules.action, 0, "ALLOW");
        assert_eq!(rules.policies.len(), 40);
        assert_eq!(
            rules.policies["ns[authz]-policy[p7]-rule[1]"],
            set_for(&config, &server(), false).allow.unwrap()["ns[authz]-policy[p7]-rule[1]"]
        );
    }
}
