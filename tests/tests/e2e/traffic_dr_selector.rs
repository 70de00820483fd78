//! DestinationRule `workloadSelector` proven with stock Envoy: two clients in one namespace, a
//! rule selecting one of them; only that client's sidecar takes it (its subsets, its connection
//! pool), in requests and in its config_dump, and the other keeps the namespace's rule.

use crate::traffic_support;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

#[test]
fn destination_rule_workload_selector() {
    let host = fqdn("backend");
    let rules = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend-for-canary, namespace: {NS}}}
spec:
  host: {host}
  workloadSelector:
    matchLabels: {{track: canary}}
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 7}}}}
  subsets:
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - match: [{{uri: {{prefix: /v2/}}}}]
    route: [{{destination: {{host: {host}, subset: v2}}}}]
  - route: [{{destination: {{host: {host}, subset: v1}}}}]
"#
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("stable", "client", ip(10), &[("track", "stable")]),
        workload("canary", "client", ip(11), &[("track", "canary")]),
        service("backend", vip(20), PORT),
        workload("backend-v1", "backend", ip(20), &[("version", "v1")]),
        workload("backend-v2", "backend", ip(21), &[("version", "v2")]),
        rules,
    ]
    .concat();
    let mesh = mesh("drselector", &yaml, &[(host.clone(), vip(20))]);
    let stable = mesh
        .add_sidecar_pod(&format!("stable.{NS}"), ip(10), PORT)
        .unwrap();
    let canary = mesh
        .add_sidecar_pod(&format!("canary.{NS}"), ip(11), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("backend-v1.{NS}"), ip(20), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("backend-v2.{NS}"), ip(21), PORT)
        .unwrap();
    let url = |path: &str| format!("http://{host}:{PORT}{path}");
    let answered_by = |answers: &[Answer]| -> Vec<(u16, String)> {
        let mut seen: Vec<(u16, String)> =
            answers.iter().map(|a| (a.status, a.service())).collect();
        seen.sort();
        seen.dedup();
        seen
    };

    // The selected client routes to the subset only its rule defines: v2, and only v2.
    let got = answered_by(&burst(&canary, &url("/v2/x"), &[], 30, 4));
    assert_eq!(got, [(200, "backend-v2".to_string())]);
    // The other client has no such subset (as under Istio: no cluster, 503)...
    let got = answered_by(&burst(&stable, &url("/v2/x"), &[], 5, 1));
    assert_eq!(got, [(503, String::new())]);
    // ...and keeps the namespace's rule and its v1 subset.
    let got = answered_by(&burst(&stable, &url("/"), &[], 30, 4));
    assert_eq!(got, [(200, "backend-v1".to_string())]);
    // For the selected client the selector rule replaces the namespace's: no v1 subset there.
    let got = answered_by(&burst(&canary, &url("/"), &[], 5, 1));
    assert_eq!(got, [(503, String::new())]);

    // What each Envoy holds.
    let clusters = |pod: &SidecarPod| dump_clusters(&pod.envoy_config_dump().unwrap());
    let max_connections =
        |c: &serde_json::Value| c["circuit_breakers"]["thresholds"][0]["max_connections"].as_u64();
    let plain = format!("outbound|{PORT}||{host}");
    let v1 = format!("outbound|{PORT}|v1|{host}");
    let v2 = format!("outbound|{PORT}|v2|{host}");
    let on_canary = clusters(&canary);
    assert!(on_canary.contains_key(&v2), "{:?}", on_canary.keys());
    assert!(!on_canary.contains_key(&v1), "{:?}", on_canary.keys());
    assert_eq!(max_connections(&on_canary[&plain]), Some(7));
    assert_eq!(max_connections(&on_canary[&v2]), Some(7));
    let on_stable = clusters(&stable);
    assert!(on_stable.contains_key(&v1), "{:?}", on_stable.keys());
    assert!(!on_stable.contains_key(&v2), "{:?}", on_stable.keys());
    assert_ne!(max_connections(&on_stable[&plain]), Some(7));
}

/// ClientTLSSettings `credentialName` on a sidecar a rule selects: MUTUAL TLS origination to a
/// server outside the mesh that requires a client certificate, the certificate, key and CA
/// from a `kind: Secret` of the client's namespace (file mode), over SDS.
#[test]
fn destination_rule_credential_name_mutual_tls() {
    let partner = "api.partner.example";
    let ext_ip = ip(50);
    // The partner's server certificate (its CA in `server/`) and the client's (in `client/`,
    // whose CA the partner trusts).
    let server = tempfile::tempdir().unwrap();
    let client = tempfile::tempdir().unwrap();
    tls_certificates(server.path(), &[partner]);
    tls_certificates(client.path(), &["canary.shop"]);
    let sf = |f: &str| server.path().join(f).to_string_lossy().into_owned();
    let cf = |f: &str| client.path().join(f).to_string_lossy().into_owned();
    let indent = |f: &str| {
        std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let rules = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: {NS}}}
spec:
  hosts: [{partner}]
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {ext_ip}, ports: {{http: 8443}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner-mtls, namespace: {NS}}}
spec:
  host: {partner}
  workloadSelector: {{matchLabels: {{track: canary}}}}
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: partner-client, subjectAltNames: [{partner}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner-simple, namespace: {NS}}}
spec:
  host: {partner}
  workloadSelector: {{matchLabels: {{track: simple}}}}
  trafficPolicy:
    tls: {{mode: SIMPLE, credentialName: partner-client, subjectAltNames: [{partner}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: partner-client, namespace: {NS}}}
stringData:
  cert: |
{cert}  key: |
{key}  cacert: |
{ca}---
apiVersion: v1
kind: Secret
metadata: {{name: partner-client, namespace: elsewhere}}
stringData:
  cert: |
{server_cert}  key: |
{server_key}  cacert: |
{client_ca}"#,
        cert = indent(&cf("cert.pem")),
        key = indent(&cf("key.pem")),
        ca = indent(&sf("ca.pem")),
        server_cert = indent(&sf("cert.pem")),
        server_key = indent(&sf("key.pem")),
        client_ca = indent(&cf("ca.pem")),
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("stable", "client", ip(10), &[("track", "stable")]),
        workload("canary", "client", ip(11), &[("track", "canary")]),
        workload("simple", "client", ip(12), &[("track", "simple")]),
        rules,
    ]
    .concat();
    let mesh = mesh("drcredential", &yaml, &[(partner.to_string(), ext_ip)]);
    let pods: Vec<SidecarPod> = [("stable", 10), ("canary", 11), ("simple", 12)]
        .into_iter()
        .map(|(name, host)| {
            mesh.add_sidecar_pod(&format!("{name}.{NS}"), ip(host), PORT)
                .unwrap()
        })
        .collect();
    let [stable, canary, simple] = &pods[..] else {
        unreachable!()
    };
    // The partner: openssl's TLS server outside the mesh, requiring a client certificate from
    // the client CA, serving files.
    let backend = mesh.add_plain_pod("partner", ext_ip).unwrap();
    let root = server.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("id.txt"), "partner").unwrap();
    let (c, k, client_ca) = (sf("cert.pem"), sf("key.pem"), cf("ca.pem"));
    let mut cmd = backend.exec([
        "openssl", "s_server", "-quiet", "-accept", "8443", "-cert", &c, "-key", &k, "-CAfile",
        &client_ca, "-Verify", "1", "-WWW",
    ]);
    cmd.current_dir(&root);
    let _server = Child::spawn("partner", cmd, None).unwrap();
    let url = format!("http://{partner}:{PORT}/id.txt");

    // The selected client originates mutual TLS with its namespace's Secret.
    let mut last = None;
    let served = wait_until(std::time::Duration::from_secs(15), || {
        let a = get(canary, &url);
        let ok = a.status == 200 && a.body == "partner";
        last = Some(a);
        ok
    });
    assert!(served, "{last:?}\n{}", mesh.envoy_log("canary"));
    // SIMPLE with the same credential: the server is verified, no certificate is presented, and
    // the partner refuses the handshake.
    let a = get(simple, &url);
    assert_eq!(a.status, 503, "{a:?}");
    let ssl = |pod: &SidecarPod, what: &str| {
        stat(
            pod,
            &format!("cluster.outbound|{PORT}||{partner}.ssl.{what}"),
        )
    };
    assert!(ssl(canary, "handshake") >= 1);
    assert!(
        ssl(simple, "connection_error") >= 1,
        "the partner let a client without a certificate in"
    );
    assert_eq!(ssl(simple, "handshake"), 0);
    // No rule selects the stable client: plaintext to a TLS port, no answer.
    let a = get(stable, &url);
    assert_eq!(a.status, 503, "{a:?}");

    // Each Envoy holds the secrets its own rule names, and only those.
    let secrets = |pod: &SidecarPod| {
        pod.envoy_admin("/config_dump?resource=dynamic_active_secrets")
            .unwrap()
            .1
    };
    let on_canary = secrets(canary);
    assert!(
        on_canary.contains("\"kubernetes://partner-client\""),
        "{on_canary}"
    );
    assert!(
        on_canary.contains("kubernetes://partner-client-cacert"),
        "{on_canary}"
    );
    let on_simple = secrets(simple);
    assert!(
        on_simple.contains("kubernetes://partner-client-cacert"),
        "{on_simple}"
    );
    assert!(
        !on_simple.contains("\"kubernetes://partner-client\""),
        "{on_simple}"
    );
    assert!(!secrets(stable).contains("kubernetes://partner-client"));
}
