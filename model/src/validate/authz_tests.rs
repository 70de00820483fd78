//! AuthorizationPolicy path templates (`{*}`, `{**}`): for each of Istio's rules a template it
//! accepts and one it refuses, the refusal naming the field and the value.

use crate::parse_file;

/// The problems of a policy with one operation `{field: [value]}`.
fn problems(field: &str, value: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  rules: [{{to: [{{operation: {{{field}: ['{value}']}}}}]}}]\n"
    );
    let file = parse_file("ap.yaml", &text).expect("valid YAML");
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let mesh = crate::MeshConfig::assemble([&file]);
    let (_, ap) = mesh.authorization_policies().next().expect("kept");
    ap.problems()
}

#[test]
fn path_templates_follow_istios_rules() {
    // (rule, accepted, refused, what the refusal says)
    let table = [
        (
            "{*} is one whole segment",
            "/api/{*}/items",
            "/videos/{*}.m4s",
            "must be a whole segment",
        ),
        (
            "{**} is the last operator",
            "/foo/{*}/bar/{**}",
            "/{**}/foo/{*}",
            "`{**}` must be the last operator, `{*}` follows it",
        ),
        (
            "literal segments may follow {**}",
            "/foo/{**}/bar",
            "/foo/{**}/{**}",
            "must be the last operator",
        ),
        (
            "no `*` wildcard beside a template",
            "/api/{**}",
            "/*/baz/{*}",
            "a `*` wildcard cannot be combined",
        ),
        (
            "no `*` suffix wildcard beside a template",
            "/api/{*}/",
            "/api/{*}/*",
            "a `*` wildcard cannot be combined",
        ),
        (
            "no `**` beside a template",
            "/{**}",
            "/**/baz/{*}",
            "a `*` wildcard cannot be combined",
        ),
        (
            "braces only in an operator",
            "/a/{*}",
            "/a/{id}",
            "`{` and `}` are allowed only in the path template operators",
        ),
        (
            "literals of Envoy's character set",
            "/v1.2~x/a-b_c/@:%41!$&()+,;/{*}",
            "/api/a=b/{*}",
            "`=` is not allowed in a path template",
        ),
        (
            "a trailing `/` but no empty segment",
            "/foo/{**}/",
            "/a//{*}",
            "empty path segment",
        ),
        (
            "starts with `/`",
            "/{*}/items",
            "{*}/items",
            "must start with `/`",
        ),
    ];
    for field in ["paths", "notPaths"] {
        for (rule, accepted, refused, says) in table {
            assert_eq!(
                problems(field, accepted),
                Vec::<String>::new(),
                "{rule}: {field} {accepted}"
            );
            let got = problems(field, refused);
            let want = format!("spec.rules[0].to[0].operation.{field}: `{refused}`:");
            assert!(
                got.len() == 1 && got[0].starts_with(&want) && got[0].contains(says),
                "{rule}: {field} {refused}\nwant {want} … {says}\n got {got:?}"
            );
        }
    }
}

#[test]
fn istio_templates_become_envoy_uri_templates() {
    use crate::path_template::{envoy_template, is_template};
    for (istio, envoy) in [
        ("/api/{*}/items", "/api/*/items"),
        ("/api/{**}", "/api/**"),
        ("/foo/{*}/bar/{**}/", "/foo/*/bar/**/"),
        ("/{**}/x", "/**/x"),
    ] {
        assert!(is_template(istio), "{istio}");
        assert_eq!(envoy_template(istio).as_deref(), Ok(envoy), "{istio}");
    }
    for plain in ["/api/*", "*", "/a/{", "/a/{x}", "/a*"] {
        assert!(!is_template(plain), "{plain}");
    }
}

/// The problems of an AuthorizationPolicy with this `spec` (flow-style YAML).
fn spec_problems(spec: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec: {spec}\n"
    );
    let file = parse_file("ap.yaml", &text).expect("valid YAML");
    let mesh = crate::MeshConfig::assemble([&file]);
    let (_, ap) = mesh.authorization_policies().next().expect("kept");
    ap.problems()
}

#[test]
fn custom_is_accepted_when_it_names_a_provider() {
    assert_eq!(
        spec_problems(
            "{action: CUSTOM, provider: {name: ext}, rules: [{to: [{operation: {paths: ['/custom/*']}}]}]}"
        ),
        Vec::<String>::new()
    );
    let p = spec_problems("{action: CUSTOM, rules: [{}]}");
    assert_eq!(p, ["spec.provider.name: required with action CUSTOM"]);
    let p = spec_problems("{action: CUSTOM, provider: {name: ''}}");
    assert!(p[0].starts_with("spec.provider.name: required"), "{p:?}");
    let p = spec_problems("{action: CUSTOM, provider: {name: a, typo: b}}");
    assert_eq!(p, ["spec.provider.typo: unknown field"]);
    let p = spec_problems("{action: DENY, provider: {name: a}}");
    assert_eq!(p, ["spec.provider: only valid with action CUSTOM"]);
}
