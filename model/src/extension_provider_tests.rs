//! Tests of reading Istio's MeshConfig `extensionProviders`.

use super::*;

#[test]
fn reads_http_and_grpc_providers_and_warns_on_the_rest() {
    let f = parse_mesh_file(
        r#"
accessLogFile: /dev/stdout
extensionProviders:
- name: authz-http
  envoyExtAuthzHttp:
    service: authz.security.svc.cluster.local
    port: 8000
    timeout: 2s
    pathPrefix: /check
    failOpen: true
    statusOnError: "503"
    includeRequestHeadersInCheck: [x-ext-authz]
    includeAdditionalHeadersInCheck: {x-added: v}
    headersToUpstreamOnAllow: [x-user]
- name: authz-grpc
  envoyExtAuthzGrpc:
    service: security/authz.example.com
    port: 9000
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"#,
    )
    .unwrap();
    assert_eq!(f.ext_authz.len(), 2);
    let ExtAuthzKind::Http(h) = &f.ext_authz[0].kind else {
        panic!("http")
    };
    assert_eq!(h.timeout, Some(Duration::from_secs(2)));
    assert_eq!(h.include_request_headers_in_check, ["x-ext-authz"]);
    assert!(h.fail_open);
    assert_eq!(
        f.ext_authz[1].service(),
        (Some("security"), "authz.example.com", 9000)
    );
    assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
    assert!(f.warnings[0].contains("accessLogFile"));
    assert!(f.warnings[1].contains("zipkin"));
}

#[test]
fn errors_name_the_field() {
    let err = |yaml: &str| parse_mesh_file(yaml).unwrap_err();
    let e = err("extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: s, port: x}\n");
    assert!(
        e.starts_with("extensionProviders[0].envoyExtAuthzHttp.port:"),
        "{e}"
    );
    let e = err(
        "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc: {service: s, port: 1, pathPrefix: /x}\n",
    );
    assert!(
        e.starts_with("extensionProviders[0].envoyExtAuthzGrpc"),
        "{e}"
    );
    assert!(e.contains("pathPrefix"), "{e}");
    let e = err("extensionProviders:\n- envoyExtAuthzGrpc: {service: s, port: 1}\n");
    assert!(e.starts_with("extensionProviders[0].name:"), "{e}");
    let e = err(
        "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: s, port: 1, statusOnError: bad}\n",
    );
    assert!(
        e.starts_with("extensionProviders[0].envoyExtAuthzHttp.statusOnError:"),
        "{e}"
    );
    let e = err(
        "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: s, port: 1, timeout: soon}\n",
    );
    assert!(
        e.starts_with("extensionProviders[0].envoyExtAuthzHttp.timeout:"),
        "{e}"
    );
    assert!(parse_mesh_file("- a\n").is_err());
}
