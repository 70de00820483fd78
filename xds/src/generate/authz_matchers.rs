//! Constructors of Envoy RBAC matchers, principals and permissions, and Istio's string-value
//! semantics (`*`, `prefix*`, `*suffix`, exact) and path templates (`{*}`, `{**}`), for the
//! AuthorizationPolicy translation.

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, permission, principal};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use meshd_model::path_template;

pub(super) fn exact(v: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Exact(v.into()))
}

pub(super) fn prefix_matcher(v: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Prefix(v.into()))
}

pub(super) fn suffix_matcher(v: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Suffix(v.into()))
}

pub(super) fn regex(re: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
        regex: re.into(),
        ..Default::default()
    }))
}

pub(super) fn string(p: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

/// Istio's string value: `*` (anything non-empty), `*suffix`, `prefix*` or exact.
pub(super) fn istio_string(v: &str) -> StringMatcher {
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

/// A `paths` / `notPaths` value: an Istio path template (`/api/{*}/items`) as Envoy's URI
/// template matcher, any other value as Istio's string forms against the path.
pub(super) fn path(v: &str) -> Permission {
    let url_path = |m: StringMatcher| {
        perm(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(m)),
        }))
    };
    if !path_template::is_template(v) {
        return url_path(istio_string(v));
    }
    match path_template::envoy_template(v) {
        Ok(template) => {
            let config = UriTemplateMatchConfig {
                path_template: template,
            };
            perm(permission::Rule::UriTemplate(TypedExtensionConfig {
                name: "envoy.path.match.uri_template.uri_template_matcher".into(),
                typed_config: Some(crate::resource::any(&config)),
            }))
        }
        // Refused by `problems`, so the policy fails closed before it gets here; matched as the
        // literal path it is, never handed to Envoy as a template it would refuse.
        Err(_) => url_path(exact(v)),
    }
}

/// A header value in Istio's forms; `*` means the header is present.
pub(super) fn header(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
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

pub(super) fn regex_escape(s: &str) -> String {
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
pub(super) fn id_namespace(v: &str) -> Principal {
    let ns: Vec<String> = v.split('*').map(regex_escape).collect();
    authenticated(regex(&format!(".*/ns/{}/.*", ns.join(".*"))))
}

pub(super) fn cidr(v: &str) -> CidrRange {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, len.parse().unwrap_or(0)),
        None => (v, if v.contains(':') { 128 } else { 32 }),
    };
    CidrRange {
        address_prefix: ip.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

pub(super) fn perm_port(v: &str) -> Permission {
    perm(permission::Rule::DestinationPort(v.parse().unwrap_or(0)))
}

pub(super) fn id(i: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}

pub(super) fn id_any() -> Principal {
    id(principal::Identifier::Any(true))
}

pub(super) fn authenticated(m: StringMatcher) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

pub(super) fn id_header(h: HeaderMatcher) -> Principal {
    id(principal::Identifier::Header(h))
}

pub(super) fn id_and(mut v: Vec<Principal>) -> Principal {
    match v.len() {
        0 => id_any(),
        1 => v.remove(0),
        _ => id(principal::Identifier::AndIds(principal::Set { ids: v })),
    }
}

pub(super) fn id_or(mut v: Vec<Principal>) -> Principal {
    match v.len() {
        1 => v.remove(0),
        _ => id(principal::Identifier::OrIds(principal::Set { ids: v })),
    }
}

/// `values` → one of them; `not_values` → none of them (0, 1 or 2 principals to AND).
pub(super) fn ids(
    values: &[String],
    not_values: &[String],
    f: impl Fn(&str) -> Principal,
) -> Vec<Principal> {
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

pub(super) fn perm(r: permission::Rule) -> Permission {
    Permission { rule: Some(r) }
}

pub(super) fn perm_any() -> Permission {
    perm(permission::Rule::Any(true))
}

pub(super) fn perm_header(h: HeaderMatcher) -> Permission {
    perm(permission::Rule::Header(h))
}

pub(super) fn perm_and(mut v: Vec<Permission>) -> Permission {
    match v.len() {
        0 => perm_any(),
        1 => v.remove(0),
        _ => perm(permission::Rule::AndRules(permission::Set { rules: v })),
    }
}

pub(super) fn perm_or(mut v: Vec<Permission>) -> Permission {
    match v.len() {
        1 => v.remove(0),
        _ => perm(permission::Rule::OrRules(permission::Set { rules: v })),
    }
}

pub(super) fn perms(
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
