//! SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use crate::CaError;

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The URI of the trust domain itself: `spiffe://<trust_domain>`.
    pub fn trust_domain_uri(trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}")
    }

    /// Checks every component against the SPIFFE ID rules; used before putting an ID
    /// in a certificate, so a struct literal with e.g. a `/` in a name cannot forge a SAN.
    pub fn validate(&self) -> Result<(), CaError> {
        let err = |reason: String| CaError::InvalidSpiffeId {
            input: self.to_string(),
            reason,
        };
        validate_trust_domain(&self.trust_domain).map_err(err)?;
        validate_segment("namespace", &self.namespace).map_err(err)?;
        validate_segment("service account", &self.service_account).map_err(err)?;
        Ok(())
    }
}

pub(crate) fn validate_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("trust domain is empty".into());
    }
    if td.len() > 255 {
        return Err("trust domain is longer than 255 characters".into());
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "trust domain {td:?} contains {c:?} (allowed: a-z 0-9 . - _)"
        ));
    }
    Ok(())
}

fn validate_segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s == "." || s == ".." {
        return Err(format!("{what} may not be {s:?}"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{what} {s:?} contains {c:?} (allowed: A-Z a-z 0-9 . - _)"
        ));
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = CaError;

    /// Strict parse: exactly `spiffe://TD/ns/NS/sa/SA`, nothing else (no query, fragment,
    /// port, user info, trailing slash, extra segments, upper-case scheme or trust domain).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| CaError::InvalidSpiffeId {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("must start with \"spiffe://\""))?;
        let mut parts = rest.split('/');
        let td = parts.next().unwrap_or_default();
        let (ns_kw, ns, sa_kw, sa) = (parts.next(), parts.next(), parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(err("too many path segments (want /ns/NS/sa/SA)"));
        }
        let (Some("ns"), Some(ns), Some("sa"), Some(sa)) = (ns_kw, ns, sa_kw, sa) else {
            return Err(err(
                "path must be exactly /ns/<namespace>/sa/<service-account>",
            ));
        };
        validate_trust_domain(td).map_err(|r| err(&r))?;
        validate_segment("namespace", ns).map_err(|r| err(&r))?;
        validate_segment("service account", sa).map_err(|r| err(&r))?;
        Ok(SpiffeId::new(td, ns, sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
            .parse()
            .unwrap();
        assert_eq!(
            id,
            SpiffeId::new("cluster.local", "default", "bookinfo-ratings")
        );
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
        );
        id.validate().unwrap();
    }

    #[test]
    fn strict_parse_rejects() {
        for bad in [
            "",
            "spiffe://",
            "http://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#f",
            "spiffe://cluster.local:443/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns/a%2F/sa/b",
            " spiffe://cluster.local/ns/a/sa/b",
        ] {
            assert!(
                bad.parse::<SpiffeId>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn validate_rejects_injection() {
        let id = SpiffeId::new("cluster.local", "a/sa/evil", "x");
        assert!(id.validate().is_err());
        let id = SpiffeId::new("cluster.local", "a", "b,URI:spiffe://x");
        assert!(id.validate().is_err());
    }
}
