//! Unit tests of the RequestAuthentication → jwt_authn builder (jwt.rs) and of the RBAC
//! matchers on its payload (authz_jwt.rs): scope, every field, keys (inline, fetched, not yet
//! fetched), stable encoding, and where the filter sits on the inbound and gateway paths.

use super::*;
use crate::generate::test_fixture::{self as fixture, labels, mesh, sidecar};
use crate::generate::{GenOptions, MeshSnapshot};
use crate::json::{any_to_json, message_to_json};
use crate::resource::LISTENER;
use meshd_model::jwt::{FetchedJwks, JwksLocation};
use serde_json::{Value, json};
use std::sync::Arc;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

fn ra(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
    )
}

fn filter_json(config: &MeshConfig, ns: &str, app: &str) -> Option<Value> {
    jwt_filter(config, "istio-system", ns, &labels(&[("app", app)])).map(|f| {
        assert_eq!(f.name, JWT_AUTHN);
        match f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any_to_json(&any),
            other => panic!("{other:?}"),
        }
    })
}

fn provider_names(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v["providers"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn scope_root_namespace_then_namespace_then_selector() {
    let config = mesh(
        &[
            ra("istio-system", "mesh", &format!("{{jwtRules: [{{issuer: mesh, jwks: '{JWKS}'}}]}}")),
            ra("app", "ns", &format!("{{jwtRules: [{{issuer: ns, jwks: '{JWKS}'}}]}}")),
            ra(
                "app",
                "api",
                &format!("{{selector: {{matchLabels: {{app: api}}}}, jwtRules: [{{issuer: a, jwks: '{JWKS}'}}, {{issuer: b, jwks: '{JWKS}'}}]}}"),
            ),
            ra("other", "x", &format!("{{jwtRules: [{{issuer: x, jwks: '{JWKS}'}}]}}")),
            ra("app", "empty", "{}"),
        ]
        .concat(),
    );
    let api = filter_json(&config, "app", "api").unwrap();
    assert_eq!(
        provider_names(&api),
        [
            "ns[app]-requestauthn[api]-rule[0]",
            "ns[app]-requestauthn[api]-rule[1]",
            "ns[app]-requestauthn[ns]-rule[0]",
            "ns[istio-system]-requestauthn[mesh]-rule[0]",
        ]
    );
    let web = filter_json(&config, "app", "web").unwrap();
    assert_eq!(
        provider_names(&web),
        [
            "ns[app]-requestauthn[ns]-rule[0]",
            "ns[istio-system]-requestauthn[mesh]-rule[0]"
        ]
    );
    let none = mesh(&ra("app", "empty", "{}"));
    assert_eq!(filter_json(&none, "app", "web"), None, "no rule, no filter");
}

#[test]
fn every_field_of_a_rule_and_the_requirement() {
    let spec = format!(
        "{{jwtRules: [{{issuer: 'https://issuer.example', audiences: [api, web], jwks: '{JWKS}', fromHeaders: [{{name: x-jwt, prefix: 'Bearer '}}], fromParams: [tok], fromCookies: [session], outputPayloadToHeader: x-jwt-payload, outputClaimToHeaders: [{{header: x-sub, claim: sub}}], forwardOriginalToken: true}}]}}"
    );
    let v = filter_json(&mesh(&ra("app", "r", &spec)), "app", "web").unwrap();
    assert_eq!(
        v["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
    );
    assert_eq!(
        v["providers"]["ns[app]-requestauthn[r]-rule[0]"],
        json!({
            "issuer": "https://issuer.example",
            "audiences": ["api", "web"],
            "local_jwks": {"inline_string": JWKS},
            "forward": true,
            "from_headers": [{"name": "x-jwt", "value_prefix": "Bearer "}],
            "from_params": ["tok"],
            "from_cookies": ["session"],
            "forward_payload_header": "x-jwt-payload",
            "payload_in_metadata": "payload",
            "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}],
        })
    );
    assert_eq!(
        v["rules"],
        json!([{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "ns[app]-requestauthn[r]-rule[0]"},
            {"allow_missing": {}},
        ]}}}])
    );
    assert_eq!(v["bypass_cors_preflight"], true);
}

#[test]
fn fetched_keys_are_served_inline_and_a_rule_without_them_verifies_nothing() {
    let uri = "http://127.0.0.1:9999/jwks";
    let mut config = mesh(&ra(
        "app",
        "r",
        &format!(
            "{{jwtRules: [{{issuer: i, jwksUri: '{uri}'}}, {{issuer: 'https://d.example'}}]}}"
        ),
    ));
    let keys = |config: &MeshConfig| {
        let v = filter_json(config, "app", "web").unwrap();
        ["rule[0]", "rule[1]"].map(|r| {
            v["providers"][format!("ns[app]-requestauthn[r]-{r}")]["local_jwks"]["inline_string"]
                .as_str()
                .unwrap()
                .to_string()
        })
    };
    for k in keys(&config) {
        assert!(k.contains("meshd-jwks-unavailable"), "{k}");
        assert_eq!(meshd_model::jwt::check_jwks(&k), Ok(1), "a valid set");
    }
    config.jwks.insert(
        JwksLocation::Uri(uri.into()),
        FetchedJwks {
            keys: Some(JWKS.into()),
            error: Some("kept while a later fetch fails".into()),
        },
    );
    config.jwks.insert(
        JwksLocation::Discovery("https://d.example/.well-known/openid-configuration".into()),
        FetchedJwks {
            keys: None,
            error: Some("connection refused".into()),
        },
    );
    let [fetched, discovered] = keys(&config);
    assert_eq!(fetched, JWKS);
    assert!(discovered.contains("meshd-jwks-unavailable"));
}

#[test]
fn the_encoding_is_stable_and_reads_as_envoy_s_message() {
    let rules: String = (0..12)
        .map(|i| format!("{{issuer: i{i}, jwks: '{JWKS}'}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = mesh(&ra("app", "r", &format!("{{jwtRules: [{rules}]}}")));
    let bytes = || match jwt_filter(&config, "istio-system", "app", &labels(&[("app", "w")]))
        .unwrap()
        .config_type
    {
        Some(http_filter::ConfigType::TypedConfig(any)) => any.value,
        other => panic!("{other:?}"),
    };
    let first = bytes();
    for _ in 0..8 {
        assert_eq!(bytes(), first);
    }
    let decoded = JwtAuthentication::decode(first.as_slice()).unwrap();
    assert_eq!(decoded.providers.len(), 12);
    assert_eq!(
        message_to_json(&decoded)["providers"]
            .as_object()
            .unwrap()
            .len(),
        12
    );
}

/// With [`fixture::SERVER`]: a policy that asks every request for a verified token.
const WORLD: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: app}
spec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}
---
"#;

/// On each HTTP chain of the inbound listener: jwt_authn, then RBAC, then the router; none on
/// the TCP port (a token cannot be read there). A change of the fetched keys reaches the
/// listener.
#[test]
fn inbound_http_chains_verify_before_rbac_and_follow_fetched_keys() {
    let uri = "http://127.0.0.1:9/k";
    let yaml = format!(
        "{}{WORLD}{}",
        fixture::SERVER,
        ra(
            "app",
            "r",
            &format!("{{jwtRules: [{{issuer: i, jwksUri: '{uri}'}}]}}")
        )
    );
    let config = mesh(&yaml);
    let listener = |config: MeshConfig, previous: Option<&MeshSnapshot>| {
        let opts = Arc::new(GenOptions::default());
        let snap = match previous {
            Some(p) => p.rebuild(2, Arc::new(config), opts),
            None => MeshSnapshot::build(1, Arc::new(config), opts),
        };
        let out = snap.generate(&sidecar("server", "app"));
        let l = any_to_json(&out[LISTENER].get("virtualInbound").unwrap().any());
        (snap, l)
    };
    let (first, l) = listener(config.clone(), None);
    let mut http_chains = 0;
    for chain in l["filter_chains"].as_array().unwrap() {
        let Some(port) = chain["filter_chain_match"]["destination_port"].as_u64() else {
            continue;
        };
        let hcm = chain["filters"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|f| f["typed_config"]["http_filters"].as_array());
        let Some(filters) = hcm else {
            assert_eq!(port, 9000);
            continue;
        };
        http_chains += 1;
        let names: Vec<&str> = filters
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .filter(|n| *n != "envoy.filters.http.cors")
            .collect();
        assert_eq!(
            names,
            [
                JWT_AUTHN,
                "envoy.filters.http.rbac",
                "envoy.filters.http.router"
            ],
            "port {port}"
        );
    }
    assert!(http_chains > 0);
    assert!(l.to_string().contains("meshd-jwks-unavailable"));
    let mut fetched = config;
    fetched.jwks.insert(
        JwksLocation::Uri(uri.into()),
        FetchedJwks {
            keys: Some(JWKS.into()),
            error: None,
        },
    );
    let (_, l) = listener(fetched, Some(&first));
    let text = l.to_string();
    assert!(
        !text.contains("meshd-jwks-unavailable"),
        "the new keys reached the listener"
    );
    assert!(text.contains("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4"));
}

/// `<iss>/<sub>` split at each `/` of the value: an issuer that is a URL still matches.
#[test]
fn request_principals_split_at_every_slash() {
    let config = mesh(&[
        WORLD.replace("requestPrincipals: ['*']", "requestPrincipals: ['https://i.example/alice', 'nobody', 'https://i.example/*', '*/alice']"),
    ].concat());
    let applied = crate::generate::authz::applicable(
        &config,
        "istio-system",
        "app",
        &labels(&[("app", "server")]),
    );
    let set = crate::generate::authz::translate(&applied, false, "cluster.local");
    let rule = message_to_json(&set.allow.unwrap()["ns[app]-policy[jwt]-rule[0]"]);
    let text = rule.to_string();
    let pairs = |iss: &str, sub: &str| {
        text.contains(&format!(r#"{{"exact":"{iss}"}}"#))
            && text.contains(&format!(r#"{{"exact":"{sub}"}}"#))
    };
    assert!(pairs("https://i.example", "alice"), "{text}");
    assert!(pairs("https:", "/i.example/alice"), "{text}");
    assert!(pairs("https:/", "i.example/alice"), "{text}");
    // `nobody` has no `/`: no request principal is that.
    assert!(text.contains(r#"{"not_id":{"any":true}}"#), "{text}");
    // The prefix form: the issuer starts with it, or is `https://i.example` and any subject.
    assert!(
        text.contains(r#"{"prefix":"https://i.example/"}"#),
        "{text}"
    );
    assert!(text.contains(r#"{"present_match":true}"#), "{text}");
    // The suffix form: the subject ends with `/alice`... or is `alice` exactly.
    assert!(text.contains(r#"{"suffix":"/alice"}"#), "{text}");
}
