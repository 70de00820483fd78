//! RequestAuthentication validation, a valid and an invalid example per rule; the JWK set check
//! on hostile bytes; `request.auth.*` attributes.

use super::*;
use crate::parse_file;
use crate::security::JwtRule;

const RSA_KEY: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;
const EC_KEY: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

fn doc(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra, namespace: ns}}\nspec:\n{spec}"
    )
}

/// `Ok(())` when accepted, else the rejection's message.
fn verdict(spec: &str) -> Result<(), String> {
    let file = parse_file("ra.yaml", &doc(spec)).expect("valid YAML");
    match &file.rejected[..] {
        [] => {
            assert_eq!(file.objects.len(), 1);
            Ok(())
        }
        [e] => Err(e.to_string()),
        more => panic!("{more:?}"),
    }
}

#[test]
fn each_rule_accepts_its_valid_example_and_names_the_field_of_its_invalid_one() {
    let jwks = |s: &str| format!("  jwtRules:\n  - issuer: i\n    jwks: '{s}'\n");
    // (rule, valid spec, invalid spec, expected text of the error)
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "issuer required",
            "  jwtRules:\n  - issuer: https://example.com\n    jwksUri: https://example.com/jwks\n"
                .into(),
            "  jwtRules:\n  - jwksUri: https://example.com/jwks\n".into(),
            "spec.jwtRules[0].issuer: must be set",
        ),
        (
            "issuer unique in a RequestAuthentication",
            "  jwtRules:\n  - issuer: a\n  - issuer: b\n".into(),
            "  jwtRules:\n  - issuer: a\n  - issuer: a\n".into(),
            "spec.jwtRules[1].issuer: `a` is already the issuer of spec.jwtRules[0]",
        ),
        (
            "jwksUri is an http(s) URL",
            "  jwtRules:\n  - issuer: i\n    jwksUri: http://127.0.0.1:8080/keys\n".into(),
            "  jwtRules:\n  - issuer: i\n    jwksUri: ftp://example.com/keys\n".into(),
            "spec.jwtRules[0].jwksUri: `ftp://example.com/keys` is not an http:// or https:// URL",
        ),
        (
            "jwksUri port in range",
            "  jwtRules:\n  - issuer: i\n    jwksUri: 'https://[::1]:443/k'\n".into(),
            "  jwtRules:\n  - issuer: i\n    jwksUri: https://example.com:99999/k\n".into(),
            "port `99999` is not 1-65535",
        ),
        (
            "jwksUri has a host",
            "  jwtRules:\n  - issuer: i\n    jwks_uri: https://h/k\n".into(),
            "  jwtRules:\n  - issuer: i\n    jwksUri: https:///k\n".into(),
            "spec.jwtRules[0].jwksUri: `https:///k` has no host",
        ),
        (
            "jwks is a JWK set",
            jwks(RSA_KEY),
            jwks(r#"{"kty":"RSA"}"#),
            "spec.jwtRules[0].jwks: not a JWK set: no `keys` array",
        ),
        (
            "jwks keys have their parameters",
            jwks(EC_KEY),
            jwks(r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#),
            "spec.jwtRules[0].jwks: keys[0].n: missing or not a string",
        ),
        (
            "jwks is JSON",
            jwks(RSA_KEY),
            jwks("{keys: nope"),
            "spec.jwtRules[0].jwks: not JSON",
        ),
        (
            "audiences not empty",
            "  jwtRules:\n  - issuer: i\n    audiences: [a, b]\n".into(),
            "  jwtRules:\n  - issuer: i\n    audiences: [a, '']\n".into(),
            "spec.jwtRules[0].audiences[1]: must not be empty",
        ),
        (
            "fromHeaders name is a header name",
            "  jwtRules:\n  - issuer: i\n    fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]\n"
                .into(),
            "  jwtRules:\n  - issuer: i\n    fromHeaders: [{prefix: 'Bearer '}]\n".into(),
            "spec.jwtRules[0].fromHeaders[0].name: empty header name",
        ),
        (
            "fromHeaders name has no spaces",
            "  jwtRules:\n  - issuer: i\n    fromHeaders: [{name: Authorization}]\n".into(),
            "  jwtRules:\n  - issuer: i\n    fromHeaders: [{name: 'x jwt'}]\n".into(),
            "`x jwt` is not a valid HTTP header name",
        ),
        (
            "fromParams not empty",
            "  jwtRules:\n  - issuer: i\n    fromParams: [token]\n".into(),
            "  jwtRules:\n  - issuer: i\n    fromParams: ['']\n".into(),
            "spec.jwtRules[0].fromParams[0]: must not be empty",
        ),
        (
            "fromCookies not empty",
            "  jwtRules:\n  - issuer: i\n    fromCookies: [session]\n".into(),
            "  jwtRules:\n  - issuer: i\n    fromCookies: ['']\n".into(),
            "spec.jwtRules[0].fromCookies[0]: must not be empty",
        ),
        (
            "outputPayloadToHeader is a header name",
            "  jwtRules:\n  - issuer: i\n    outputPayloadToHeader: x-jwt-payload\n".into(),
            "  jwtRules:\n  - issuer: i\n    outputPayloadToHeader: 'x:y'\n".into(),
            "spec.jwtRules[0].outputPayloadToHeader: `x:y` is not a valid HTTP header name",
        ),
        (
            "outputClaimToHeaders header",
            "  jwtRules:\n  - issuer: i\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n"
                .into(),
            "  jwtRules:\n  - issuer: i\n    outputClaimToHeaders: [{claim: sub}]\n".into(),
            "spec.jwtRules[0].outputClaimToHeaders[0].header: empty header name",
        ),
        (
            "outputClaimToHeaders claim",
            "  jwtRules:\n  - issuer: i\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n"
                .into(),
            "  jwtRules:\n  - issuer: i\n    outputClaimToHeaders: [{header: x-sub}]\n".into(),
            "spec.jwtRules[0].outputClaimToHeaders[0].claim: must not be empty",
        ),
        (
            "timeout positive",
            "  jwtRules:\n  - issuer: i\n    jwksUri: https://h/k\n    timeout: 2s\n".into(),
            "  jwtRules:\n  - issuer: i\n    jwksUri: https://h/k\n    timeout: 0s\n".into(),
            "spec.jwtRules[0].timeout: must be positive",
        ),
        (
            "timeout is a duration",
            "  jwtRules:\n  - issuer: i\n    timeout: 1.5s\n".into(),
            "  jwtRules:\n  - issuer: i\n    timeout: soon\n".into(),
            "spec.jwtRules[0].timeout",
        ),
        (
            "forwardOriginalToken is a boolean",
            "  jwtRules:\n  - issuer: i\n    forwardOriginalToken: true\n".into(),
            "  jwtRules:\n  - issuer: i\n    forwardOriginalToken: [yes]\n".into(),
            "spec.jwtRules[0].forwardOriginalToken",
        ),
        (
            "selector labels exact",
            "  selector: {matchLabels: {app: a}}\n  jwtRules: [{issuer: i}]\n".into(),
            "  selector: {matchLabels: {app: 'a*'}}\n  jwtRules: [{issuer: i}]\n".into(),
            "spec.selector.matchLabels.app: `a*`: wildcard not allowed",
        ),
        (
            "targetRefs unsupported",
            "  jwtRules: [{issuer: i}]\n".into(),
            "  targetRefs: [{kind: Gateway, name: gw}]\n  jwtRules: [{issuer: i}]\n".into(),
            "spec.targetRefs: not supported",
        ),
        (
            "targetRef and selector exclusive",
            "  selector: {matchLabels: {app: a}}\n".into(),
            "  selector: {matchLabels: {app: a}}\n  targetRef: {kind: Gateway, name: gw}\n".into(),
            "spec: only one of targetRefs or selector can be set",
        ),
        (
            "unknown field",
            "  jwtRules: [{issuer: i}]\n".into(),
            "  jwtRules: [{issuer: i, jwtHeaders: [x]}]\n".into(),
            "unknown field `jwtHeaders`",
        ),
    ];
    for (rule, valid, invalid, expected) in cases {
        assert_eq!(verdict(&valid), Ok(()), "{rule}: valid example rejected");
        let e = verdict(&invalid).expect_err(rule);
        assert!(e.contains(expected), "{rule}: {e:?} lacks {expected:?}");
        assert!(e.starts_with("ra.yaml:"), "{rule}: {e}");
    }
}

#[test]
fn v1beta1_reads_the_same() {
    let text = doc("  jwtRules: [{issuer: i, jwksUri: 'https://h/k'}]\n")
        .replace("security.istio.io/v1", "security.istio.io/v1beta1");
    let file = parse_file("ra.yaml", &text).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let mesh = crate::MeshConfig::assemble([&file]);
    let (_, ra) = mesh.request_authentications().next().unwrap();
    assert_eq!(ra.jwt_rules[0].issuer, "i");
    assert_eq!(
        mesh.jwks_to_fetch().into_iter().collect::<Vec<_>>(),
        [(
            JwksLocation::Uri("https://h/k".into()),
            DEFAULT_FETCH_TIMEOUT
        )]
    );
}

#[test]
fn key_sources() {
    let rule = |jwks: Option<&str>, uri: Option<&str>| JwtRule {
        issuer: "https://issuer.example/".into(),
        jwks: jwks.map(Into::into),
        jwks_uri: uri.map(Into::into),
        ..Default::default()
    };
    assert_eq!(
        rule(Some("{}"), Some("u")).key_source(),
        KeySource::Inline("{}")
    );
    assert_eq!(
        rule(None, Some("u")).key_source(),
        KeySource::Fetched(JwksLocation::Uri("u".into()))
    );
    assert_eq!(
        rule(None, None).key_source(),
        KeySource::Fetched(JwksLocation::Discovery(
            "https://issuer.example/.well-known/openid-configuration".into()
        ))
    );
}

#[test]
fn jwks_check_answers_any_bytes_without_panicking() {
    assert_eq!(check_jwks(RSA_KEY), Ok(1));
    assert_eq!(check_jwks(EC_KEY), Ok(1));
    let hostile: Vec<String> = vec![
        String::new(),
        "null".into(),
        "[]".into(),
        r#"{"keys":{}}"#.into(),
        r#"{"keys":[]}"#.into(),
        r#"{"keys":[null]}"#.into(),
        r#"{"keys":[{"kty":7}]}"#.into(),
        r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#.into(),
        r#"{"keys":[{"kty":"EC","crv":"P-999","x":"AA","y":"AA"}]}"#.into(),
        r#"{"keys":[{"kty":"OKP","crv":"X25519","x":"AA"}]}"#.into(),
        r#"{"keys":[{"kty":"oct","k":"AA","kid":5}]}"#.into(),
        r#"{"keys":[{"kty":"PGP"}]}"#.into(),
        "[".repeat(100_000),
        format!(
            r#"{{"keys":[{}]}}"#,
            vec![r#"{"kty":"oct","k":"AA"}"#; 300].join(",")
        ),
        format!(r#"{{"keys":"{}"}}"#, "a".repeat(MAX_JWKS_BYTES)),
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x7b]).into_owned(),
    ];
    for text in &hostile {
        let e = check_jwks(text).expect_err(&text[..text.len().min(60)]);
        assert!(!e.is_empty());
    }
}

#[test]
fn request_auth_attributes() {
    use AuthAttribute as A;
    let ok = |k: &str| A::parse(k).unwrap();
    assert_eq!(ok("request.auth.principal"), A::Principal);
    assert_eq!(ok("request.auth.audiences"), A::Audiences);
    assert_eq!(ok("request.auth.presenter"), A::Presenter);
    assert_eq!(
        ok("request.auth.claims[groups]"),
        A::Claim(vec!["groups".into()])
    );
    assert_eq!(
        ok("request.auth.claims[realm][roles]"),
        A::Claim(vec!["realm".into(), "roles".into()])
    );
    for (bad, why) in [
        ("request.auth.claim[iss]", "unknown attribute"),
        ("request.auth.claims", "name the claim"),
        ("request.auth.claims[]", "empty or malformed"),
        ("request.auth.claims[a", "in brackets"),
        ("request.auth.claims[a]x", "in brackets"),
        ("request.auth.claims.a", "in brackets"),
        (
            "request.auth.claims[a][b][c][d][e][f][g][h][i][j][k]",
            "at most 10",
        ),
    ] {
        let e = A::parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

/// The AuthorizationPolicy fields a RequestAuthentication feeds are accepted now, and their
/// values checked as Istio does.
#[test]
fn authorization_policy_jwt_fields() {
    let policy = |rules: &str| {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  rules: {rules}\n"
        );
        let file = parse_file("ap.yaml", &text).unwrap();
        let mesh = crate::MeshConfig::assemble([&file]);
        let (_, ap) = mesh.authorization_policies().next().unwrap();
        ap.problems()
    };
    let clean = [
        "[{from: [{source: {requestPrincipals: ['*']}}]}]",
        "[{from: [{source: {requestPrincipals: ['https://i/sub', 'i/*', '*/sub']}}]}]",
        "[{from: [{source: {notRequestPrincipals: ['*']}}]}]",
        "[{when: [{key: request.auth.principal, values: ['i/s']}]}]",
        "[{when: [{key: request.auth.audiences, values: [a]}]}]",
        "[{when: [{key: request.auth.presenter, notValues: [p]}]}]",
        "[{when: [{key: 'request.auth.claims[groups]', values: [admin]}]}]",
        "[{when: [{key: 'request.auth.claims[a][b]', values: [x]}]}]",
    ];
    for rules in clean {
        assert_eq!(policy(rules), Vec::<String>::new(), "{rules}");
    }
    for (rules, expected) in [
        (
            "[{from: [{source: {requestPrincipals: ['a*b']}}]}]",
            "spec.rules[0].from[0].source.requestPrincipals: `a*b`",
        ),
        (
            "[{from: [{source: {notRequestPrincipals: ['']}}]}]",
            "spec.rules[0].from[0].source.notRequestPrincipals: empty value",
        ),
        (
            "[{when: [{key: request.auth.principal, values: ['*a*']}]}]",
            "spec.rules[0].when[0].values: `*a*`",
        ),
        (
            "[{when: [{key: request.auth.claims, values: [x]}]}]",
            "spec.rules[0].when[0].key: `request.auth.claims`: name the claim",
        ),
        (
            "[{when: [{key: request.auth.subject, values: [x]}]}]",
            "spec.rules[0].when[0].key: unknown attribute `request.auth.subject`",
        ),
    ] {
        let problems = policy(rules).join("; ");
        assert!(problems.contains(expected), "{rules}: {problems}");
    }
}
