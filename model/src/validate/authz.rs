//! Why an AuthorizationPolicy cannot be enforced as written; such a policy stays in force as a
//! deny-all (see `MeshConfig`), so these are reasons, never a rejection.

use super::{Check, address_or_cidr};
use crate::security::{AuthorizationPolicy, AuthzAction, ConditionKey};

/// Istio's wildcard rule for string values: `*` alone, or once at the start or the end.
fn wildcard_value(v: &str, what: &str) -> Check {
    if v.is_empty() {
        return Err(format!("{what}: empty value"));
    }
    let inner = v
        .strip_prefix('*')
        .or_else(|| v.strip_suffix('*'))
        .unwrap_or(v);
    if inner.contains('*') {
        return Err(format!(
            "{what}: `{v}`: `*` is allowed only alone, as a prefix or as a suffix"
        ));
    }
    Ok(())
}

fn port_value(v: &str, what: &str) -> Check {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(()),
        _ => Err(format!("{what}: `{v}` is not a port number 1-65535")),
    }
}

/// A path: an Istio path template (`/api/{*}/items`, see `crate::path_template`), or a string
/// value in which `{` and `}` are refused as Istio does (they mean a template gone wrong).
fn path_value(v: &str, what: &str) -> Check {
    if crate::path_template::is_template(v) {
        return crate::path_template::envoy_template(v)
            .map(|_| ())
            .map_err(|e| format!("{what}: `{v}`: invalid path template: {e}"));
    }
    if v.contains(['{', '}']) {
        return Err(format!(
            "{what}: `{v}`: `{{` and `}}` are allowed only in the path template operators {{*}} and {{**}}, each a whole segment"
        ));
    }
    wildcard_value(v, what)
}

fn each(values: &[String], what: &str, check: fn(&str, &str) -> Check, out: &mut Vec<String>) {
    for v in values {
        if let Err(e) = check(v, what) {
            out.push(e);
        }
    }
}

/// A `serviceAccounts` entry: `namespace/name`, exactly, no wildcard.
fn service_account_value(v: &str, what: &str) -> Check {
    if v.len() > MAX_SERVICE_ACCOUNT_LEN {
        return Err(format!(
            "{what}: {} characters, at most {MAX_SERVICE_ACCOUNT_LEN} allowed",
            v.len()
        ));
    }
    match crate::security::Source::service_account_principal(v) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{what}: `{v}` is not namespace/serviceaccount (one `/`, no wildcard)"
        )),
    }
}

const MAX_SERVICE_ACCOUNTS: usize = 16;
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

fn cidr_value(v: &str, what: &str) -> Check {
    address_or_cidr(v, what)
}

fn any_value(v: &str, what: &str) -> Check {
    if v.is_empty() {
        Err(format!("{what}: empty value"))
    } else {
        Ok(())
    }
}

impl AuthorizationPolicy {
    /// Why this policy cannot be enforced as written: each unsupported or invalid field, by its
    /// path (`spec.rules[0].from[0].source.requestPrincipals: ...`). Empty when fully supported.
    /// A policy with problems stays in force as a deny-all for the workloads it selects.
    pub fn problems(&self) -> Vec<String> {
        authorization_policy(self)
    }
}

/// `spec.provider` of a CUSTOM policy: `{name: <extension provider>}`. Whether the server has
/// that provider is the generator's to say (it depends on `meshd serve --mesh-config`).
fn custom_provider(p: Option<&serde_json::Value>) -> Check {
    let Some(serde_json::Value::Object(fields)) = p else {
        return Err("spec.provider.name: required with action CUSTOM".into());
    };
    if let Some(k) = fields.keys().find(|k| *k != "name") {
        return Err(format!("spec.provider.{k}: unknown field"));
    }
    match fields.get("name") {
        Some(serde_json::Value::String(n)) if !n.is_empty() => Ok(()),
        _ => Err("spec.provider.name: required with action CUSTOM, a non-empty string".into()),
    }
}

/// Every reason an AuthorizationPolicy cannot be enforced as written (see
/// `AuthorizationPolicy::problems`).
fn authorization_policy(ap: &AuthorizationPolicy) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(e) = &ap.unreadable {
        out.push(format!("spec cannot be read in full: {}", e.message));
    }
    match ap.action {
        AuthzAction::Custom => {
            if let Err(e) = custom_provider(ap.provider.as_ref()) {
                out.push(e)
            }
        }
        _ if ap.provider.is_some() => {
            out.push("spec.provider: only valid with action CUSTOM".into())
        }
        _ => {}
    }
    if let Some(sel) = &ap.selector
        && let Err(e) = super::selector::labels(&sel.labels, "spec.selector.matchLabels")
    {
        out.push(e);
    }
    if !ap.target_refs.is_empty() {
        out.push(super::target_refs_refused("targetRefs", "selector"));
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let s = &from.source;
            let at = format!("{at}.from[{j}].source");
            if s.is_empty() {
                out.push(format!("{at}: must set at least one field"));
            }
            let by_account = !(s.service_accounts.is_empty() && s.not_service_accounts.is_empty());
            let by_identity = !(s.principals.is_empty()
                && s.not_principals.is_empty()
                && s.namespaces.is_empty()
                && s.not_namespaces.is_empty());
            if by_account && by_identity {
                out.push(format!(
                    "{at}: serviceAccounts cannot be set together with principals or namespaces (or their not-forms)"
                ));
            }
            for (name, list) in [
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
            ] {
                if list.len() > MAX_SERVICE_ACCOUNTS {
                    out.push(format!(
                        "{at}.{name}: {} entries, at most {MAX_SERVICE_ACCOUNTS} allowed",
                        list.len()
                    ));
                }
            }
            for (name, values, check) in [
                (
                    "principals",
                    &s.principals,
                    wildcard_value as fn(&str, &str) -> Check,
                ),
                ("notPrincipals", &s.not_principals, wildcard_value),
                ("requestPrincipals", &s.request_principals, wildcard_value),
                (
                    "notRequestPrincipals",
                    &s.not_request_principals,
                    wildcard_value,
                ),
                ("namespaces", &s.namespaces, wildcard_value),
                ("notNamespaces", &s.not_namespaces, wildcard_value),
                (
                    "serviceAccounts",
                    &s.service_accounts,
                    service_account_value,
                ),
                (
                    "notServiceAccounts",
                    &s.not_service_accounts,
                    service_account_value,
                ),
                ("ipBlocks", &s.ip_blocks, cidr_value),
                ("notIpBlocks", &s.not_ip_blocks, cidr_value),
                ("remoteIpBlocks", &s.remote_ip_blocks, cidr_value),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks, cidr_value),
            ] {
                each(values, &format!("{at}.{name}"), check, &mut out);
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let o = &to.operation;
            let at = format!("{at}.to[{j}].operation");
            if o.is_empty() {
                out.push(format!("{at}: must set at least one field"));
            }
            for (name, values, check) in [
                ("hosts", &o.hosts, wildcard_value as fn(&str, &str) -> Check),
                ("notHosts", &o.not_hosts, wildcard_value),
                ("ports", &o.ports, port_value),
                ("notPorts", &o.not_ports, port_value),
                ("methods", &o.methods, any_value),
                ("notMethods", &o.not_methods, any_value),
                ("paths", &o.paths, path_value),
                ("notPaths", &o.not_paths, path_value),
            ] {
                each(values, &format!("{at}.{name}"), check, &mut out);
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let at = format!("{at}.when[{j}]");
            if cond.values.is_empty() && cond.not_values.is_empty() {
                out.push(format!("{at}: set values or notValues"));
            }
            let check: fn(&str, &str) -> Check = match cond.parsed_key() {
                ConditionKey::RequestHeader(_)
                | ConditionKey::SourceNamespace
                | ConditionKey::SourcePrincipal
                | ConditionKey::ConnectionSni => wildcard_value,
                ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                    cidr_value
                }
                ConditionKey::DestinationPort => port_value,
                ConditionKey::RequestAuth(k) => match crate::jwt::AuthAttribute::parse(&k) {
                    Ok(crate::jwt::AuthAttribute::Principal) => wildcard_value,
                    Ok(_) => any_value,
                    Err(e) => {
                        out.push(format!("{at}.key: {e}"));
                        continue;
                    }
                },
                ConditionKey::EnvoyFilter(k) => {
                    out.push(format!("{at}.key: `{k}` is not supported"));
                    continue;
                }
                ConditionKey::Unknown(k) => {
                    out.push(format!("{at}.key: unknown attribute `{k}`"));
                    continue;
                }
            };
            each(&cond.values, &format!("{at}.values"), check, &mut out);
            each(
                &cond.not_values,
                &format!("{at}.notValues"),
                check,
                &mut out,
            );
        }
    }
    out
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
