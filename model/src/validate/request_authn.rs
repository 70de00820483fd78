//! RequestAuthentication, by Istio's documented rules: the first problem, by its field path.

use super::selector;
use crate::jwt::check_jwks;
use crate::security::RequestAuthentication;
use std::time::Duration;

/// An HTTP header name as Envoy accepts one in a filter config (RFC 7230 token).
fn header_name(name: &str, what: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() {
        return Err(format!("{what}: empty header name"));
    }
    if !name.bytes().all(token) {
        return Err(format!("{what}: `{name}` is not a valid HTTP header name"));
    }
    Ok(())
}

/// An `http(s)://host[:port]/...` URL; meshd fetches it.
fn fetch_url(uri: &str, what: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or(format!("{what}: `{uri}` is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(format!("{what}: `{uri}`: unclosed `[` in the host")),
        },
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{what}: `{uri}` has no host"));
    }
    if let Some(p) = port
        && !matches!(p.parse::<u32>(), Ok(1..=65535))
    {
        return Err(format!("{what}: `{uri}`: port `{p}` is not 1-65535"));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what}: `{uri}` contains whitespace"));
    }
    Ok(())
}

fn non_empty(values: &[String], what: &str) -> Result<(), String> {
    match values.iter().position(|v| v.is_empty()) {
        Some(i) => Err(format!("{what}[{i}]: must not be empty")),
        None => Ok(()),
    }
}

const MAX_JWT_RULES: usize = 64;

/// Istio's checks of one RequestAuthentication, the first problem by its field path.
pub(crate) fn request_authentication(ra: &RequestAuthentication) -> Result<(), String> {
    if let Some(sel) = &ra.selector {
        selector::labels(&sel.labels, "spec.selector.matchLabels")?;
    }
    let targets = ra.target_ref.is_some() || !ra.target_refs.is_empty();
    if targets && ra.selector.is_some() {
        return Err("spec: only one of targetRefs or selector can be set".into());
    }
    if targets {
        let field = if ra.target_ref.is_some() {
            "targetRef"
        } else {
            "targetRefs"
        };
        return Err(super::target_refs_refused(field, "selector"));
    }
    if ra.jwt_rules.len() > MAX_JWT_RULES {
        return Err(format!(
            "spec.jwtRules: {} rules, at most {MAX_JWT_RULES} allowed",
            ra.jwt_rules.len()
        ));
    }
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            return Err(format!("{at}.issuer: must be set"));
        }
        if let Some((j, _)) = ra.jwt_rules[..i]
            .iter()
            .enumerate()
            .find(|(_, r)| r.issuer == rule.issuer)
        {
            return Err(format!(
                "{at}.issuer: `{}` is already the issuer of spec.jwtRules[{j}]",
                rule.issuer
            ));
        }
        non_empty(&rule.audiences, &format!("{at}.audiences"))?;
        if let Some(uri) = &rule.jwks_uri {
            fetch_url(uri, &format!("{at}.jwksUri"))?;
        }
        if let Some(jwks) = &rule.jwks {
            check_jwks(jwks).map_err(|e| format!("{at}.jwks: {e}"))?;
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            header_name(&h.name, &format!("{at}.fromHeaders[{j}].name"))?;
        }
        non_empty(&rule.from_params, &format!("{at}.fromParams"))?;
        non_empty(&rule.from_cookies, &format!("{at}.fromCookies"))?;
        if let Some(h) = &rule.output_payload_to_header {
            header_name(h, &format!("{at}.outputPayloadToHeader"))?;
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let at = format!("{at}.outputClaimToHeaders[{j}]");
            header_name(&c.header, &format!("{at}.header"))?;
            if c.claim.is_empty() {
                return Err(format!("{at}.claim: must not be empty"));
            }
        }
        if rule.timeout == Some(Duration::ZERO) {
            return Err(format!("{at}.timeout: must be positive"));
        }
    }
    Ok(())
}
