//! RBAC principals for the JWT side of an AuthorizationPolicy: `requestPrincipals` and the
//! `request.auth.*` conditions, matched on the verified token's payload that the jwt_authn
//! filter left in its dynamic metadata (`super::super::jwt::PAYLOAD_KEY`). A request without a
//! verified token has no payload, so such a value never matches it (and a `not` form always
//! does), as in Istio.
//!
//! A request principal is `<iss>/<sub>`; the payload holds `iss` and `sub` apart, so a value is
//! matched as the disjunction over the `/` it may be split at (issuers are often URLs and have
//! several): `https://a.example/u1` is `iss = https://a.example, sub = u1` or
//! `iss = https:, sub = /a.example/u1`, and so on.

use super::matchers::{id, id_and, id_or, istio_string, prefix_matcher, suffix_matcher};
use crate::generate::jwt::{JWT_AUTHN, PAYLOAD_KEY};
use envoy_types::pb::envoy::config::rbac::v3::{
    MetadataSource, Principal, SourcedMetadata, principal,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, StringMatcher, ValueMatcher, list_matcher, metadata_matcher,
    value_matcher,
};
use meshd_model::jwt::AuthAttribute;

fn metadata(claim: &[&str], value: value_matcher::MatchPattern) -> Principal {
    let path = std::iter::once(PAYLOAD_KEY)
        .chain(claim.iter().copied())
        .map(|key| metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(key.into())),
        })
        .collect();
    id(principal::Identifier::SourcedMetadata(SourcedMetadata {
        metadata_matcher: Some(MetadataMatcher {
            filter: JWT_AUTHN.into(),
            path,
            value: Some(ValueMatcher {
                match_pattern: Some(value),
            }),
            invert: false,
        }),
        // The request's dynamic metadata, where jwt_authn writes.
        metadata_source: MetadataSource::Dynamic as i32,
    }))
}

fn claim_is(claim: &str, m: StringMatcher) -> Principal {
    metadata(&[claim], value_matcher::MatchPattern::StringMatch(m))
}

fn claim_present(claim: &[&str]) -> Principal {
    metadata(claim, value_matcher::MatchPattern::PresentMatch(true))
}

fn exact(v: &str) -> StringMatcher {
    super::matchers::exact(v)
}

/// `prefix*` with an empty prefix is any value (Envoy refuses an empty prefix matcher).
fn starts(claim: &str, prefix: &str) -> Principal {
    match prefix {
        "" => claim_present(&[claim]),
        p => claim_is(claim, prefix_matcher(p)),
    }
}

fn ends(claim: &str, suffix: &str) -> Principal {
    match suffix {
        "" => claim_present(&[claim]),
        s => claim_is(claim, suffix_matcher(s)),
    }
}

/// The byte positions of `/` in `v`, where `<iss>/<sub>` may be split.
fn slashes(v: &str) -> impl Iterator<Item = usize> + '_ {
    v.match_indices('/').map(|(i, _)| i)
}

fn or_never(alternatives: Vec<Principal>) -> Principal {
    if alternatives.is_empty() {
        // No split of the value can be an `<iss>/<sub>`: it matches no request.
        id(principal::Identifier::NotId(Box::new(id(
            principal::Identifier::Any(true),
        ))))
    } else {
        id_or(alternatives)
    }
}

/// A `requestPrincipals` value (or `request.auth.principal`): `*`, `prefix*`, `*suffix` or
/// exact, against `<iss>/<sub>` of the verified token.
pub(super) fn request_principal(v: &str) -> Principal {
    if v == "*" {
        return claim_present(&["iss"]);
    }
    if let Some(prefix) = v.strip_suffix('*') {
        // The split is past the prefix (the issuer starts with it), or inside it.
        let mut any = vec![starts("iss", prefix)];
        any.extend(slashes(prefix).map(|i| {
            id_and(vec![
                claim_is("iss", exact(&prefix[..i])),
                starts("sub", &prefix[i + 1..]),
            ])
        }));
        return id_or(any);
    }
    if let Some(suffix) = v.strip_prefix('*') {
        // The split is before the suffix (the subject ends with it), or inside it.
        let mut any = vec![ends("sub", suffix)];
        any.extend(slashes(suffix).map(|i| {
            id_and(vec![
                ends("iss", &suffix[..i]),
                claim_is("sub", exact(&suffix[i + 1..])),
            ])
        }));
        return id_or(any);
    }
    or_never(
        slashes(v)
            .map(|i| {
                id_and(vec![
                    claim_is("iss", exact(&v[..i])),
                    claim_is("sub", exact(&v[i + 1..])),
                ])
            })
            .collect(),
    )
}

/// A claim's value in Istio's forms; a claim holding a list matches when one of its strings
/// does (`aud`, `groups`).
fn claim_value(path: &[&str], v: &str) -> Principal {
    if v == "*" {
        return claim_present(path);
    }
    let string = value_matcher::MatchPattern::StringMatch(istio_string(v));
    let list = value_matcher::MatchPattern::ListMatch(Box::new(ListMatcher {
        match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(ValueMatcher {
            match_pattern: Some(string.clone()),
        }))),
    }));
    id_or(vec![metadata(path, string), metadata(path, list)])
}

/// One value of a `request.auth.*` condition.
pub(super) fn auth_condition(attribute: &AuthAttribute, v: &str) -> Principal {
    match attribute {
        AuthAttribute::Principal => request_principal(v),
        AuthAttribute::Audiences => claim_value(&["aud"], v),
        AuthAttribute::Presenter => claim_value(&["azp"], v),
        AuthAttribute::Claim(path) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            claim_value(&path, v)
        }
    }
}
