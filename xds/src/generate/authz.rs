//! AuthorizationPolicy → Envoy RBAC filters on a workload's inbound path (HTTP:
//! `envoy.filters.http.rbac` ahead of the router; TCP: `envoy.filters.network.rbac` ahead of the
//! TCP proxy), with Istio's semantics:
//!
//! - **Scope**: a policy in the root namespace (`istio-system`) applies mesh-wide, one elsewhere to
//!   its namespace; a `selector` narrows either to the workloads whose labels match.
//! - **Order**: AUDIT (an RBAC filter with action LOG: it marks matching requests for the access
//!   log, never blocks), then CUSTOM (external authorization, authz_custom.rs; on TCP ports too,
//!   authz_custom_tcp.rs), DENY, ALLOW. A request any DENY rule matches is refused; when
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
//!   compare case-insensitively. Paths also take Istio's templates (`/api/{*}/items`: `{*}` one
//!   segment, `{**}` any number), as Envoy's URI template matcher.
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
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use meshd_model::MeshConfig;
use meshd_model::networking::Labels;
use meshd_model::registry::{Workload, selector_matches};
use meshd_model::security::{
    AuthorizationPolicy, AuthzAction, ConditionKey, Operation, Rule, Source,
};
use std::collections::BTreeMap;

#[path = "authz_custom.rs"]
mod custom;
#[path = "authz_encode.rs"]
mod encode;
pub use custom::{HTTP_EXT_AUTHZ, refused as custom_refused};
use encode::{Action, HttpRbacConfig, NetworkRbacConfig, sorted};
#[path = "authz_jwt.rs"]
mod jwt_matchers;
#[path = "authz_matchers.rs"]
mod matchers;
use matchers::{
    authenticated, cidr, exact, header, id, id_and, id_any, id_header, id_namespace, id_or, ids,
    istio_string, perm, perm_and, perm_any, perm_header, perm_port, perms, prefix_matcher, regex,
    suffix_matcher,
};

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
    let filters = custom::PortFilters::new(&policies, !http, &index.config, opts);
    if http {
        InboundPolicy {
            http_filters: filters.http(),
            ..Default::default()
        }
    } else {
        InboundPolicy {
            network_filters: filters.network(),
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
    let port = |for_tcp| custom::PortFilters::new(&policies, for_tcp, &index.config, opts);
    InboundPolicy {
        http_filters: port(false).http(),
        network_filters: port(true).network(),
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

pub use meshd_model::security::DRY_RUN_ANNOTATION;

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
            dry_run: meshd_model::security::is_dry_run(&o.meta.annotations),
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
            // Its provider's filters, or deny rules where it cannot serve: `custom::apply`.
            (AuthzAction::Custom, _) => continue,
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
                ConditionKey::RequestAuth(k) => {
                    // A key that does not parse is reported by `problems` (the policy fails
                    // closed before it gets here).
                    if let Ok(attribute) = meshd_model::jwt::AuthAttribute::parse(&k) {
                        base_ids.extend(ids(vals, nots, |v| {
                            jwt_matchers::auth_condition(&attribute, v)
                        }))
                    }
                }
                // Reported by `problems`: such a policy fails closed before it gets here.
                ConditionKey::EnvoyFilter(_) | ConditionKey::Unknown(_) => {}
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
        // The verified JWT's `<iss>/<sub>`: only on HTTP.
        if !(s.request_principals.is_empty() && s.not_request_principals.is_empty())
            && self.usable(true)?
        {
            and.extend(ids(
                &s.request_principals,
                &s.not_request_principals,
                jwt_matchers::request_principal,
            ));
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
            and.extend(perms(&o.paths, &o.not_paths, matchers::path));
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

// ---------- principal / permission trees ----------

#[cfg(test)]
use super::authz_cases as cases;

#[cfg(test)]
#[path = "security_tests.rs"]
mod security_tests;

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
