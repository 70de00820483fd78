//! `security.istio.io` RequestAuthentication (JWT rules), as Istio spells it, with its one-object
//! checks; the JWK set check shared by inline `jwks` and keys meshd fetches from a `jwksUri`;
//! the fetched keys as config data (`FetchedJwks`); and the `request.auth.*` attributes of an
//! AuthorizationPolicy `when` condition.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

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
