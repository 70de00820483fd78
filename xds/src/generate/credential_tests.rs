//! DestinationRule `credentialName`: the upstream TLS context names the SDS secrets, and each
//! proxy receives exactly those of its own namespace that its clusters name — a sidecar only
//! from a rule selecting it, a gateway from any rule in its view — and nothing else.

use crate::generate::{GenOptions, MeshSnapshot};
use crate::json::any_to_json;
use crate::proxy::{NodeType, Proxy};
use crate::resource::{CLUSTER, SECRET};
use meshd_model::{MeshConfig, parse_file};
use serde_json::Value;
use std::sync::Arc;

const API: &str = "outbound|80||api.example.com";
const OTHER: &str = "outbound|80||other.example.com";

fn pem(kind: &str, body: &str) -> String {
    format!("-----BEGIN {kind}-----\\n{body}\\n-----END {kind}-----\\n")
}

fn secret(name: &str, ns: &str, tag: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData:\n  cert: \"{}\"\n  key: \"{}\"\n  cacert: \"{}\"\n",
        pem("CERTIFICATE", &format!("cert-{tag}")),
        pem("PRIVATE KEY", &format!("key-{tag}")),
        pem("CERTIFICATE", &format!("ca-{tag}")),
    )
}

fn snapshot() -> MeshSnapshot {
    let mut yaml = String::new();
    for host in ["api.example.com", "other.example.com"] {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {host}, namespace: ext}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n"
        ));
    }
    yaml.push_str(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api-for-special, namespace: a}
spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: special}}
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: client, subjectAltNames: [api.example.com]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: other, namespace: ext}
spec:
  host: other.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: client}
"#,
    );
    let workloads = [
        ("special", "a", "app: special"),
        ("plain", "a", "app: plain"),
        ("special", "c", "app: special"),
        ("egress", "g", "istio: egressgateway"),
        ("egress", "h", "istio: egressgateway"),
    ];
    for (i, (name, ns, labels)) in workloads.into_iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: 10.44.1.{i}, labels: {{{labels}}}, serviceAccount: {name}}}\n"
        ));
    }
    for (name, ns, tag) in [
        ("client", "a", "a"),
        ("other", "a", "a-other"),
        ("client", "c", "c"),
        ("client", "g", "g"),
    ] {
        yaml.push_str(&secret(name, ns, tag));
    }
    let file = parse_file("mesh.yaml", &yaml).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let config = MeshConfig::assemble([&file]);
    assert!(config.rejected.is_empty(), "{:?}", config.rejected);
    MeshSnapshot::build(1, Arc::new(config), Arc::new(GenOptions::default()))
}

struct Got {
    /// (cluster, its upstream TLS context or Null).
    tls: Vec<(&'static str, Value)>,
    /// SDS secret name → its JSON.
    secrets: Vec<(String, Value)>,
    clusters: crate::resource::Layer,
}

fn got(snap: &MeshSnapshot, name: &str, ns: &str, node_type: NodeType) -> Got {
    let w = snap.index.workload(name, ns).unwrap();
    let mut p = Proxy::for_workload(w, "cluster.local");
    p.node_type = node_type;
    let out = snap.generate(&p);
    let tls = [API, OTHER]
        .into_iter()
        .map(|c| {
            let cluster = any_to_json(&out[CLUSTER].get(c).unwrap().any());
            (c, cluster["transport_socket"]["typed_config"].clone())
        })
        .collect();
    let secrets = out
        .get(SECRET)
        .map(|s| {
            s.iter()
                .map(|r| (r.name.clone(), any_to_json(&r.any())))
                .collect()
        })
        .unwrap_or_default();
    Got {
        tls,
        secrets,
        clusters: out[CLUSTER].layers()[0].clone(),
    }
}

fn inline(v: &Value) -> String {
    let b64 = v["inline_bytes"].as_str().unwrap_or_default();
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

#[test]
fn a_selected_sidecar_originates_mutual_tls_with_its_namespaces_secret() {
    let snap = snapshot();
    let special = got(&snap, "special", "a", NodeType::Sidecar);
    let api = &special.tls[0].1;
    let common = &api["common_tls_context"];
    assert_eq!(
        common["tls_certificate_sds_secret_configs"][0]["name"],
        "kubernetes://client"
    );
    let combined = &common["combined_validation_context"];
    assert_eq!(
        combined["validation_context_sds_secret_config"]["name"],
        "kubernetes://client-cacert"
    );
    assert_eq!(
        combined["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        "api.example.com"
    );
    assert_eq!(api["sni"], "api.example.com");
    // The rule without a selector names a credential too: at sidecars Istio leaves it out, and
    // the connection goes without TLS (meshd analyze says so).
    assert_eq!(special.tls[1].1, Value::Null);
    // Exactly the two secrets the cluster names, from namespace a's Secret `client`.
    let names: Vec<&str> = special.secrets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["kubernetes://client", "kubernetes://client-cacert"]);
    let cert = &special.secrets[0].1["tls_certificate"];
    assert!(inline(&cert["certificate_chain"]).contains("cert-a"));
    // (the key is redacted in the JSON rendering; it is there.)
    assert!(!cert["private_key"].is_null(), "{cert}");
    let ca = &special.secrets[1].1["validation_context"]["trusted_ca"];
    assert!(inline(ca).contains("ca-a"), "{ca}");
}

#[test]
fn no_other_proxy_gets_a_credential_its_config_does_not_name() {
    let snap = snapshot();
    // Same namespace, not selected; selected labels in another namespace (whose own Secret
    // `client` it must not get either): no TLS context, no secrets, the shared layer.
    for (name, ns) in [("plain", "a"), ("special", "c")] {
        let g = got(&snap, name, ns, NodeType::Sidecar);
        assert_eq!(g.tls[0].1, Value::Null, "{ns}/{name}");
        assert!(g.secrets.is_empty(), "{ns}/{name}: {:?}", g.secrets);
        assert!(Arc::ptr_eq(&g.clusters, &snap.clusters), "{ns}/{name}");
    }
}

#[test]
fn gateways_read_credentials_of_rules_without_a_selector_in_their_own_namespace() {
    let snap = snapshot();
    let egress = got(&snap, "egress", "g", NodeType::Router);
    // Namespace a's selector rule does not reach a gateway in g.
    assert_eq!(egress.tls[0].1, Value::Null);
    // SIMPLE: the credential is the CA only.
    let other = &egress.tls[1].1["common_tls_context"];
    assert!(
        other["tls_certificate_sds_secret_configs"].is_null(),
        "{other}"
    );
    assert_eq!(
        other["combined_validation_context"]["validation_context_sds_secret_config"]["name"],
        "kubernetes://client-cacert"
    );
    let names: Vec<&str> = egress.secrets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["kubernetes://client-cacert"],
        "the certificate is not named"
    );
    let ca = &egress.secrets[0].1["validation_context"]["trusted_ca"];
    assert!(inline(ca).contains("ca-g"), "{ca}");
    // A gateway whose namespace holds no such Secret: the context names it, nothing is sent
    // (Envoy keeps the cluster warming), never another namespace's.
    let bare = got(&snap, "egress", "h", NodeType::Router);
    assert_eq!(bare.tls[1].1, egress.tls[1].1);
    assert!(bare.secrets.is_empty(), "{:?}", bare.secrets);
}
