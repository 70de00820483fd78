//! `security.istio.io` RequestAuthentication (JWT rules), as Istio spells it, with its one-object
//! checks; the JWK set check shared by inline `jwks` and keys meshd fetches from a `jwksUri`;
//! the fetched keys as config data (`FetchedJwks`); and the `request.auth.*` attributes of an
//! AuthorizationPolicy `when` condition.

use crate::duration;
use crate::security::WorkloadSelector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
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
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

/// Where a rule's public keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// `jwks`, inline (used when set, even with a `jwksUri`).
    Inline(&'a str),
    /// Fetched by meshd: the `jwksUri`, or the issuer's OpenID discovery document when neither
    /// field is set.
    Fetched(JwksLocation),
}

/// A JWK set meshd fetches, the key of `MeshConfig::jwks`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum JwksLocation {
    Uri(String),
    /// `<issuer>/.well-known/openid-configuration`, whose `jwks_uri` names the set.
    Discovery(String),
}

impl std::fmt::Display for JwksLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksLocation::Uri(u) => f.write_str(u),
            JwksLocation::Discovery(u) => write!(f, "{u} (OpenID discovery)"),
        }
    }
}

/// Istio's default for `timeout`.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl JwtRule {
    pub fn key_source(&self) -> KeySource<'_> {
        match (&self.jwks, &self.jwks_uri) {
            (Some(inline), _) => KeySource::Inline(inline),
            (None, Some(uri)) => KeySource::Fetched(JwksLocation::Uri(uri.clone())),
            (None, None) => KeySource::Fetched(JwksLocation::Discovery(format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ))),
        }
    }

    pub fn fetch_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_FETCH_TIMEOUT)
    }
}

/// Keys meshd fetched for one `JwksLocation`: they enter the config as data, so the generator
/// stays a pure function of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FetchedJwks {
    /// The last JWK set that was fetched and checked; kept while later fetches fail.
    pub keys: Option<String>,
    /// Why the last fetch failed; `None` after a good one.
    pub error: Option<String>,
}

pub type JwksByLocation = BTreeMap<JwksLocation, FetchedJwks>;

/// Bounds on a JWK set, inline or fetched.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_JWKS_KEYS: usize = 256;

fn base64url(v: &serde_json::Value, what: &str) -> Result<(), String> {
    use base64::Engine;
    let Some(s) = v.as_str() else {
        return Err(format!("{what}: missing or not a string"));
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    engine
        .decode(s.trim_end_matches('='))
        .map(|_| ())
        .map_err(|e| format!("{what}: not base64url: {e}"))
}

/// Whether `text` is a JWK set Envoy can verify tokens with (RFC 7517: `{"keys": [...]}`, each
/// key of a type Envoy reads, with its public parameters). `Ok`: the number of keys. Any bytes
/// give an answer, never a panic.
pub fn check_jwks(text: &str) -> Result<usize, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "{} bytes, at most {MAX_JWKS_BYTES} allowed",
            text.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWK set: no `keys` array")?;
    if keys.is_empty() {
        return Err("`keys` is empty".into());
    }
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "{} keys, at most {MAX_JWKS_KEYS} allowed",
            keys.len()
        ));
    }
    for (i, key) in keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        let kty = key
            .get("kty")
            .and_then(|k| k.as_str())
            .ok_or(format!("{at}.kty: missing or not a string"))?;
        let param = |name: &str| base64url(&key[name], &format!("{at}.{name}"));
        match kty {
            "RSA" => {
                param("n")?;
                param("e")?;
            }
            "EC" => {
                match key["crv"].as_str() {
                    Some("P-256" | "P-384" | "P-521") => {}
                    other => {
                        return Err(format!("{at}.crv: {other:?} is not P-256, P-384 or P-521"));
                    }
                }
                param("x")?;
                param("y")?;
            }
            "OKP" => {
                if key["crv"].as_str() != Some("Ed25519") {
                    return Err(format!("{at}.crv: an OKP key must be Ed25519"));
                }
                param("x")?;
            }
            "oct" => param("k")?,
            other => {
                return Err(format!("{at}.kty: `{other}` is not RSA, EC, OKP or oct"));
            }
        }
        for field in ["kid", "alg"] {
            if !key[field].is_null() && !key[field].is_string() {
                return Err(format!("{at}.{field}: not a string"));
            }
        }
    }
    Ok(keys.len())
}

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
pub(crate) fn validate(ra: &RequestAuthentication) -> Result<(), String> {
    if let Some(sel) = &ra.selector {
        crate::validate::selector_labels(&sel.labels, "spec.selector.matchLabels")?;
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
        return Err(format!(
            "spec.{field}: not supported (meshd attaches RequestAuthentication to sidecars and gateways by selector)"
        ));
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

/// A `request.auth.*` attribute of an AuthorizationPolicy `when` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthAttribute {
    /// `request.auth.principal`: `<iss>/<sub>` of the verified token.
    Principal,
    /// `request.auth.audiences`: its `aud` claim.
    Audiences,
    /// `request.auth.presenter`: its `azp` claim.
    Presenter,
    /// `request.auth.claims[a][b]`: the claim at that path of its payload.
    Claim(Vec<String>),
}

const MAX_CLAIM_DEPTH: usize = 10;

impl AuthAttribute {
    pub fn parse(key: &str) -> Result<AuthAttribute, String> {
        match key {
            "request.auth.principal" => return Ok(AuthAttribute::Principal),
            "request.auth.audiences" => return Ok(AuthAttribute::Audiences),
            "request.auth.presenter" => return Ok(AuthAttribute::Presenter),
            _ => {}
        }
        let Some(mut rest) = key.strip_prefix("request.auth.claims") else {
            return Err(format!(
                "unknown attribute `{key}` (request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[name])"
            ));
        };
        let mut path = Vec::new();
        while !rest.is_empty() {
            let (name, after) = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .ok_or(format!(
                    "`{key}`: claims are named in brackets, as request.auth.claims[name][nested]"
                ))?;
            if name.is_empty() || name.contains('[') {
                return Err(format!("`{key}`: empty or malformed claim name"));
            }
            path.push(name.to_string());
            rest = after;
        }
        if path.is_empty() {
            return Err(format!(
                "`{key}`: name the claim, as request.auth.claims[name]"
            ));
        }
        if path.len() > MAX_CLAIM_DEPTH {
            return Err(format!(
                "`{key}`: claims nested {} deep, at most {MAX_CLAIM_DEPTH} allowed",
                path.len()
            ));
        }
        Ok(AuthAttribute::Claim(path))
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
