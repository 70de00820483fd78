//! PeerAuthentication and AuthorizationPolicy as one proxy receives them: Istio's mTLS mode
//! precedence, the inbound chains each mode makes, auto mTLS on the client side, and the RBAC
//! filters in place on the inbound path.

use crate::generate::MeshSnapshot;
use crate::generate::test_fixture::{self as fixture, INGRESS, labels, resource, router, sidecar};
use crate::resource::{ENDPOINT, LISTENER};
use meshd_model::security::MtlsMode;
use serde_json::Value;

/// With [`fixture::SERVER`]: a legacy server and a client in another namespace.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy, namespace: app}
spec: {address: 10.44.0.21, labels: {app: server, track: legacy}, serviceAccount: legacy}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: other}
spec: {address: 10.44.0.30, labels: {app: client}, serviceAccount: client}
---
"#;

fn snapshot(extra: &str) -> MeshSnapshot {
    fixture::snapshot(&format!("{}{MESH}{extra}", fixture::SERVER))
}

fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{spec}}}\n---\n"
    )
}

/// The inbound listener's chains as (name, transport protocol, HTTP filter names).
fn inbound_chains(snap: &MeshSnapshot, workload: &str) -> Vec<(String, String, Vec<String>)> {
    let l = resource(snap, &sidecar(workload, "app"), LISTENER, "virtualInbound");
    l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["filter_chain_match"]["destination_port"].is_u64())
        .map(|c| {
            let filters = &c["filters"];
            let names = filters
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|f| {
                    let http = f["typed_config"]["http_filters"].as_array().cloned();
                    match http {
                        Some(h) => h
                            .iter()
                            .map(|h| h["name"].as_str().unwrap().to_string())
                            .collect(),
                        None => vec![f["name"].as_str().unwrap().to_string()],
                    }
                })
                .collect();
            (
                c["name"].as_str().unwrap().to_string(),
                c["filter_chain_match"]["transport_protocol"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                names,
            )
        })
        .collect()
}

#[test]
fn mtls_mode_precedence_workload_then_namespace_then_mesh() {
    let snap = snapshot(
        &[
            pa("istio-system", "mesh", "mtls: {mode: STRICT}"),
            pa("app", "ns", "mtls: {mode: PERMISSIVE}"),
            pa(
                "app",
                "legacy",
                "selector: {matchLabels: {track: legacy}}, mtls: {mode: DISABLE}, portLevelMtls: {8081: {mode: STRICT}}",
            ),
            pa("app", "unset", "selector: {matchLabels: {app: nothing}}, mtls: {mode: DISABLE}"),
        ]
        .concat(),
    );
    let idx = &snap.index;
    let server = labels(&[("app", "server")]);
    let legacy = labels(&[("app", "server"), ("track", "legacy")]);
    assert_eq!(idx.mtls_mode("app", &server, 8080), MtlsMode::Permissive);
    assert_eq!(idx.mtls_mode("app", &legacy, 8080), MtlsMode::Disable);
    assert_eq!(idx.mtls_mode("app", &legacy, 8081), MtlsMode::Strict);
    assert_eq!(idx.mtls_mode("other", &server, 8080), MtlsMode::Strict);
    // Nothing anywhere: PERMISSIVE.
    let bare = snapshot("");
    assert_eq!(
        bare.index.mtls_mode("app", &server, 8080),
        MtlsMode::Permissive
    );
    // UNSET inherits.
    let unset = snapshot(
        &[
            pa("istio-system", "mesh", "mtls: {mode: STRICT}"),
            pa("app", "ns", "mtls: {mode: UNSET}"),
        ]
        .concat(),
    );
    assert_eq!(
        unset.index.mtls_mode("app", &server, 8080),
        MtlsMode::Strict
    );
}

#[test]
fn each_mode_makes_its_inbound_chains() {
    let snap = snapshot(
        &[
            pa("app", "ns", "mtls: {mode: STRICT}"),
            pa(
                "app",
                "legacy",
                "selector: {matchLabels: {track: legacy}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8081: {mode: DISABLE}}",
            ),
        ]
        .concat(),
    );
    let names = |w: &str| -> Vec<(String, String)> {
        inbound_chains(&snap, w)
            .into_iter()
            .map(|(n, t, _)| (n, t))
            .collect()
    };
    let s = |n: &str, t: &str| (n.to_string(), t.to_string());
    assert_eq!(
        names("server"),
        [
            s("inbound|8080||-mtls", "tls"),
            s("inbound|8081||-mtls", "tls"),
            s("inbound|9000||-mtls", "tls"),
        ]
    );
    assert_eq!(
        names("legacy"),
        [
            s("inbound|8080||-mtls", "tls"),
            s("inbound|8080||-plaintext", "raw_buffer"),
            s("inbound|8081||-plaintext", "raw_buffer"),
            s("inbound|9000||-mtls", "tls"),
            s("inbound|9000||-plaintext", "raw_buffer"),
        ]
    );
}

#[test]
fn clients_follow_the_server_mode() {
    // Auto mTLS: an endpoint whose server side is DISABLE carries no `tlsMode: istio`, so the
    // client's cluster picks its plaintext transport socket for it.
    let snap = snapshot(&pa(
        "app",
        "legacy",
        "selector: {matchLabels: {track: legacy}}, mtls: {mode: DISABLE}",
    ));
    let eds = resource(
        &snap,
        &sidecar("client", "other"),
        ENDPOINT,
        "outbound|8080||server.app.svc.cluster.local",
    );
    let mut modes: Vec<(String, Value)> = eds["endpoints"][0]["lb_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["endpoint"]["address"]["socket_address"]["address"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                e["metadata"]["filter_metadata"]["envoy.transport_socket_match"]["tlsMode"].clone(),
            )
        })
        .collect();
    modes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        modes,
        [
            ("10.44.0.20".to_string(), Value::from("istio")),
            ("10.44.0.21".to_string(), Value::Null),
        ]
    );
}

#[test]
fn policy_filters_sit_before_the_router_and_tcp_proxy_on_every_chain() {
    let snap = snapshot(
        &[
            pa("app", "ns", "mtls: {mode: PERMISSIVE}"),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: app}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}\n---\n".into(),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow, namespace: app}\nspec: {selector: {matchLabels: {track: legacy}}, rules: [{}]}\n---\n".into(),
        ]
        .concat(),
    );
    let http_deny = ["envoy.filters.http.rbac", "envoy.filters.http.router"];
    let http_both = [
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ];
    let tcp_deny = [
        "envoy.filters.network.rbac",
        "envoy.filters.network.tcp_proxy",
    ];
    for (workload, http, tcp) in [
        ("server", &http_deny[..], &tcp_deny[..]),
        (
            "legacy",
            &http_both[..],
            &[
                "envoy.filters.network.rbac",
                "envoy.filters.network.rbac",
                "envoy.filters.network.tcp_proxy",
            ][..],
        ),
    ] {
        let chains = inbound_chains(&snap, workload);
        assert_eq!(
            chains.len(),
            6,
            "PERMISSIVE: two chains for each of 3 ports"
        );
        for (chain, _, filters) in chains {
            let want = if chain.starts_with("inbound|9000") {
                tcp
            } else {
                http
            };
            let filters: Vec<&str> = filters
                .iter()
                .map(String::as_str)
                .filter(|f| *f != "envoy.filters.http.cors")
                .collect();
            assert_eq!(filters, want, "{workload} {chain}");
        }
    }
}

#[test]
fn gateways_enforce_the_policies_that_select_them() {
    let gateway = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingress, namespace: istio-system}
spec: {address: 10.44.0.2, labels: {istio: ingressgateway}, serviceAccount: ingress}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 9443, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: server.app.svc.cluster.local, port: {number: 8080}}
  tcp:
  - route:
    - destination: {host: server.app.svc.cluster.local, port: {number: 9000}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin/*"]}}]
---
"#;
    let snap = snapshot(gateway);
    let router = router("ingress", "istio-system");
    let http = resource(&snap, &router, LISTENER, "0.0.0.0_8080");
    let filters: Vec<&str> = http["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .filter(|f| f.contains("rbac") || f.contains("router"))
        .collect();
    assert_eq!(
        filters,
        ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    );
    let rbac = http["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.rbac")
        .unwrap();
    assert_eq!(rbac["typed_config"]["rules"]["action"], "DENY");
    assert!(
        rbac["typed_config"]["rules"]["policies"]["ns[istio-system]-policy[edge]-rule[0]"]
            .is_object()
    );
    // On the TCP server the HTTP-only path is dropped from the DENY rule: it denies all.
    let tcp = resource(&snap, &router, LISTENER, "0.0.0.0_9443");
    let names: Vec<&str> = tcp["filter_chains"][0]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    // Sidecars are not selected by the gateway's policy.
    for (_, _, filters) in inbound_chains(&snap, "server") {
        assert!(!filters.iter().any(|f| f.contains("rbac")), "{filters:?}");
    }
}

#[test]
fn gateway_credentials_come_from_secrets_of_the_gateway_namespace_over_sds() {
    use crate::resource::SECRET;
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cert = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN PRIVATE KEY-----\nMIIEkey\n-----END PRIVATE KEY-----\n";
    let ca = "-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----\n";
    let yaml = format!(
        r#"
{INGRESS}apiVersion: v1
kind: Secret
metadata: {{name: shop-cert, namespace: istio-system}}
type: kubernetes.io/tls
data: {{tls.crt: {c}, tls.key: {k}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: mtls-cert, namespace: istio-system}}
data: {{cert: {c}, key: {k}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: mtls-cert-cacert, namespace: istio-system}}
data: {{cacert: {a}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-cert, namespace: app}}
type: kubernetes.io/tls
data: {{tls.crt: {c}, tls.key: {k}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: app}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["shop.example.com"]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
  - port: {{number: 9443, name: https-mtls, protocol: HTTPS}}
    hosts: ["partners.example.com"]
    tls: {{mode: MUTUAL, credentialName: mtls-cert}}
---
"#,
        c = b64(cert),
        k = b64(key),
        a = b64(ca)
    );
    let snap = snapshot(&yaml);
    let router = router("ingress", "istio-system");
    let l = resource(&snap, &router, LISTENER, "0.0.0.0_8443");
    let tls = &l["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"];
    assert_eq!(
        tls["tls_certificate_sds_secret_configs"][0]["name"], "kubernetes://shop-cert",
        "{tls}"
    );
    assert!(
        tls["tls_certificates"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    );
    let m = resource(&snap, &router, LISTENER, "0.0.0.0_9443");
    let mtls = &m["filter_chains"][0]["transport_socket"]["typed_config"];
    assert_eq!(mtls["require_client_certificate"], true);
    assert_eq!(
        mtls["common_tls_context"]["combined_validation_context"]["validation_context_sds_secret_config"]
            ["name"],
        "kubernetes://mtls-cert-cacert"
    );
    // The gateway (in istio-system) gets its namespace's Secrets — the certificates inline in
    // SDS resources, the CA from the `-cacert` Secret — and nothing from `app`'s same-named one.
    let res = snap.generate(&router);
    let secrets = &res[SECRET];
    let names: Vec<&str> = secrets.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kubernetes://mtls-cert",
            "kubernetes://mtls-cert-cacert",
            "kubernetes://shop-cert"
        ]
    );
    // Sidecars get no credentials.
    let sidecar = snap.generate(&sidecar("server", "app"));
    assert!(sidecar.get(SECRET).is_none_or(|s| s.is_empty()));
}

/// OPTIONAL_MUTUAL: the gateway's chain verifies a client certificate against the server's CA
/// (files or the credential's `-cacert` over SDS), and its CRL (`caCrl`, the Secret's `ca.crl`),
/// but lets a client without one through.
#[test]
fn optional_mutual_gateway_servers_verify_without_requiring_client_certificates() {
    use crate::resource::SECRET;
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pem = |what: &str| format!("-----BEGIN {what}-----\nMIIB\n-----END {what}-----\n");
    let yaml = format!(
        r#"
{INGRESS}apiVersion: v1
kind: Secret
metadata: {{name: opt-cert, namespace: istio-system}}
data: {{cert: {c}, key: {k}, cacert: {a}, ca.crl: {r}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: app}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: https-files, protocol: HTTPS}}
    hosts: ["files.example.com"]
    tls: {{mode: OPTIONAL_MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, caCrl: /ca.crl, subjectAltNames: [client.example]}}
  - port: {{number: 9444, name: https-sds, protocol: HTTPS}}
    hosts: ["sds.example.com"]
    tls: {{mode: OPTIONAL_MUTUAL, credentialName: opt-cert}}
"#,
        c = b64(&pem("CERTIFICATE")),
        k = b64(&pem("PRIVATE KEY")),
        a = b64(&pem("CERTIFICATE")),
        r = b64(&pem("X509 CRL")),
    );
    let snap = snapshot(&yaml);
    let router = router("ingress", "istio-system");
    let files = resource(&snap, &router, LISTENER, "0.0.0.0_9443");
    let tls = &files["filter_chains"][0]["transport_socket"]["typed_config"];
    assert_eq!(tls["require_client_certificate"], false, "{tls:#}");
    let validation = &tls["common_tls_context"]["validation_context"];
    assert_eq!(validation["trusted_ca"]["filename"], "/ca.pem", "{tls:#}");
    assert_eq!(validation["crl"]["filename"], "/ca.crl", "{tls:#}");
    assert_eq!(
        validation["match_typed_subject_alt_names"][0]["matcher"]["exact"], "client.example",
        "{tls:#}"
    );
    let sds = resource(&snap, &router, LISTENER, "0.0.0.0_9444");
    let tls = &sds["filter_chains"][0]["transport_socket"]["typed_config"];
    assert_eq!(tls["require_client_certificate"], false, "{tls:#}");
    assert_eq!(
        tls["common_tls_context"]["combined_validation_context"]["validation_context_sds_secret_config"]
            ["name"],
        "kubernetes://opt-cert-cacert",
        "{tls:#}"
    );
    let res = snap.generate(&router);
    let names: Vec<&str> = res[SECRET].iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["kubernetes://opt-cert", "kubernetes://opt-cert-cacert"]
    );
    let ca = crate::json::any_to_json(
        &res[SECRET]
            .get("kubernetes://opt-cert-cacert")
            .unwrap()
            .any(),
    );
    let crl = &ca["validation_context"]["crl"]["inline_bytes"];
    assert_eq!(crl, &serde_json::json!(b64(&pem("X509 CRL"))), "{ca:#}");
}

/// DestinationRule TLS origination with files: the server's certificate is checked against the
/// CA file and the CRL file (`caCrl`).
#[test]
fn destination_rule_ca_crl_checks_the_servers_certificate() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: ext}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /ca.pem, caCrl: /ca.crl}
"#;
    let snap = fixture::snapshot(yaml);
    let cluster = resource(
        &snap,
        &sidecar("client", "ext"),
        crate::resource::CLUSTER,
        "outbound|443||api.example.com",
    );
    let validation =
        &cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"];
    assert_eq!(
        validation["trusted_ca"]["filename"], "/ca.pem",
        "{cluster:#}"
    );
    assert_eq!(validation["crl"]["filename"], "/ca.crl", "{cluster:#}");
}
