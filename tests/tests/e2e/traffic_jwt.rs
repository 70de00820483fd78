//! RequestAuthentication and JWT in AuthorizationPolicy through stock Envoy: tokens signed here
//! (ES256), keys inline and from a `jwksUri` that meshd fetches from a local HTTP server and
//! pushes inline. A valid token passes, no token passes a RequestAuthentication alone, an
//! invalid one is refused 401 with Envoy's reason; `requestPrincipals` refuses a request without
//! a token (403) and tells subjects apart behind a URL issuer; a `request.auth.claims` condition
//! allows one token and denies another; claims reach the app as headers.

use crate::authz_support;

use authz_support::cases::Client;
use authz_support::*;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;
use std::io::{Read, Write};

const INLINE_ISSUER: &str = "inline-issuer";
const URI_ISSUER: &str = "https://uri-issuer.example";
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Signer {
    key: EcdsaKeyPair,
    kid: &'static str,
}

impl Signer {
    fn new(kid: &'static str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { key, kid }
    }

    /// The public key as a JWK set.
    fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref(); // 0x04 || x || y
        json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}]})
        .to_string()
    }

    fn x(&self) -> String {
        b64(&self.key.public_key().as_ref()[1..33])
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn claims(iss: &str, sub: &str, groups: &[&str]) -> serde_json::Value {
    json!({"iss": iss, "sub": sub, "groups": groups, "exp": 4_102_444_800u64})
}

/// A JWKS server on the loopback of the node meshd runs on: answers every request with `body`.
fn serve_jwks(w: &World, body: String) -> String {
    let listener = w
        .mesh
        .node()
        .in_netns(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// `200`, `401 <reason>`, `403 <reason>` or why there was no answer.
fn call(w: &World, token: Option<&str>) -> String {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    let url = format!("http://{SERVER}:{MAIN}/");
    match w.client(Client::A).request("GET", &url, &headers, None) {
        Ok(r) if r.status == 200 => "200".into(),
        Ok(r) => format!("{} {}", r.status, r.body.trim()),
        Err(e) => format!("no answer: {e}"),
    }
}

fn check(what: &str, want: &str, f: impl FnMut() -> String) {
    expect(what, want, f).unwrap();
}

fn request_authn(uri: &str, inline_jwks: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {NS}}}
spec:
  selector:
    matchLabels: {{app: server}}
  jwtRules:
  - issuer: {INLINE_ISSUER}
    jwks: '{inline_jwks}'
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
  - issuer: {URI_ISSUER}
    jwksUri: {uri}
---
"#
    )
}

#[test]
fn jwt_through_envoy() {
    let w = World::start(
        "jwt",
        Options {
            mtls: "STRICT",
            other: false,
            plain: false,
        },
    );
    let inline_key = Signer::new("inline");
    let uri_key = Signer::new("fetched");
    let uri = serve_jwks(&w, uri_key.jwks());
    let authn = request_authn(&uri, &inline_key.jwks());

    // RequestAuthentication alone; wait until the keys meshd fetched are in the server's Envoy.
    w.apply("jwt.yaml", &authn, &uri_key.x(), true);
    let dump = || {
        w.server
            .envoy_admin("/config_dump?resource=dynamic_listeners")
            .unwrap()
            .1
    };
    let config_dump = dump();
    assert!(config_dump.contains(JWT_FILTER), "{config_dump}");
    assert!(
        config_dump.contains("\"payload_in_metadata\": \"payload\""),
        "{config_dump}"
    );

    let alice_inline = inline_key.token(claims(INLINE_ISSUER, "alice", &["admins"]));
    let alice_uri = uri_key.token(claims(URI_ISSUER, "alice", &["admins", "dev"]));
    let bob_uri = uri_key.token(claims(URI_ISSUER, "bob", &["dev"]));
    let wrong_issuer = inline_key.token(claims("https://evil.example", "alice", &[]));
    // Signed by a key that claims the inline key's id.
    let bad_signature = Signer::new("inline").token(claims(INLINE_ISSUER, "alice", &[]));
    let expired = inline_key.token(json!({"iss": INLINE_ISSUER, "sub": "alice", "exp": 1}));

    check("valid inline-key token", "200", || {
        call(&w, Some(&alice_inline))
    });
    check("valid fetched-key token", "200", || {
        call(&w, Some(&alice_uri))
    });
    check("no token, RequestAuthentication alone", "200", || {
        call(&w, None)
    });
    check("wrong issuer", "401 Jwt issuer is not configured", || {
        call(&w, Some(&wrong_issuer))
    });
    check("bad signature", "401 Jwt verification fails", || {
        call(&w, Some(&bad_signature))
    });
    check("expired", "401 Jwt is expired", || call(&w, Some(&expired)));
    // outputClaimToHeaders: the subject reaches the app; the token does not (forwardOriginalToken
    // is false).
    let url = format!("http://{SERVER}:{MAIN}/");
    let bearer = format!("Bearer {alice_inline}");
    let r = w
        .client(Client::A)
        .request("GET", &url, &[("authorization", &bearer)], None)
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echoed["headers"]["x-jwt-sub"], "alice", "{echoed}");
    assert!(echoed["headers"]["authorization"].is_null(), "{echoed}");

    // A token is required: no token is 403 from RBAC; any verified principal passes.
    let require = server_policy(
        "require-jwt",
        "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
    );
    w.apply(
        "jwt.yaml",
        &format!("{authn}{require}"),
        "ns[authz]-policy[require-jwt]-rule[0]",
        true,
    );
    // On the server's inbound chains: jwt_authn, then the RBAC filter, then the router.
    let config_dump = dump();
    let after = &config_dump[config_dump.find(JWT_FILTER).unwrap()..];
    let (rbac_at, router_at) = (
        after.find("envoy.filters.http.rbac"),
        after.find("envoy.filters.http.router"),
    );
    assert!(
        rbac_at.is_some() && rbac_at < router_at,
        "jwt_authn, then RBAC, then the router"
    );
    check("no token, principal required", &denied(), || call(&w, None));
    check("token, principal required", "200", || {
        call(&w, Some(&alice_inline))
    });
    check(
        "invalid token still 401",
        "401 Jwt verification fails",
        || call(&w, Some(&bad_signature)),
    );

    // One principal behind a URL issuer: `<iss>/<sub>`.
    let only_alice = server_policy(
        "only-alice",
        &format!("rules: [{{from: [{{source: {{requestPrincipals: ['{URI_ISSUER}/alice']}}}}]}}]"),
    );
    w.apply(
        "jwt.yaml",
        &format!("{authn}{only_alice}"),
        "ns[authz]-policy[only-alice]-rule[0]",
        true,
    );
    check("alice of the URL issuer", "200", || {
        call(&w, Some(&alice_uri))
    });
    check("bob of the URL issuer", &denied(), || {
        call(&w, Some(&bob_uri))
    });
    check("alice of the other issuer", &denied(), || {
        call(&w, Some(&alice_inline))
    });

    // A claim condition: the `groups` list holds `dev`.
    let devs = server_policy(
        "devs",
        "rules: [{when: [{key: 'request.auth.claims[groups]', values: [dev]}]}]",
    );
    w.apply(
        "jwt.yaml",
        &format!("{authn}{devs}"),
        "ns[authz]-policy[devs]-rule[0]",
        true,
    );
    check("groups has dev", "200", || call(&w, Some(&bob_uri)));
    check("groups lacks dev", &denied(), || {
        call(&w, Some(&alice_inline))
    });
    check("no token, claim required", &denied(), || call(&w, None));

    // The fetch is reported.
    let configz = w.mesh.admin_json("/debug/configz").unwrap();
    let jwks = &configz["jwks"];
    assert_eq!(jwks[0]["location"], uri, "{configz}");
    assert_eq!(jwks[0]["keys"], true, "{configz}");
    let (_, metrics) = w.mesh.admin_get("/metrics").unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("pilot_jwks_resolver_network_fetch_success_total ")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}
