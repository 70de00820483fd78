//! Issue 2, end to end: the real `meshd serve` drives stock Envoy sidecars in network-namespace
//! pods with the VoiceCore mesh (`deploy/mesh/voicecore.yaml`).
//!
//! - A calls B by service name (resolved through the pod's hosts file to the VIP) and B's app
//!   sees A's SPIFFE ID in `x-forwarded-client-cert`.
//! - A client without a sidecar calling B's pod directly is refused under STRICT.
//! - Envoy's own `/config_dump` holds the listeners, clusters, routes and secrets meshd sent, and
//!   its `/certs` the workload's SPIFFE ID.
//! - VirtualService and DestinationRule changes on disk reach Envoy without a restart.
//! - Bad input is rejected per document with `file:line`; the rest keeps serving.
//! - `meshd proxy-status` shows every connected proxy SYNCED.
//!
//! Run as root: `cargo build --bin meshd && cargo test -p meshd-e2e --test walking_skeleton`.

use crate::skeleton_support;

use std::collections::BTreeSet;
use std::time::Duration;

use meshd_e2e::*;
use serde_json::Value;
use skeleton_support::*;

/// The section of Envoy's `/config_dump` with this `@type`.
fn dump_section<'a>(dump: &'a Value, ty: &str) -> &'a Value {
    let ty = format!("type.googleapis.com/envoy.admin.v3.{ty}");
    dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|s| s["@type"] == ty.as_str()))
        .unwrap_or_else(|| panic!("no {ty} in config_dump"))
}

fn names(items: &Value, path: &[&str]) -> BTreeSet<String> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| path.iter().fold(i, |v, k| &v[*k]).as_str())
        .map(str::to_string)
        .collect()
}

/// Names of the resources meshd says it last sent to `proxy`, by type URL.
fn meshd_sent(mesh: &Mesh, proxy: &str, type_url: &str) -> (String, BTreeSet<String>) {
    let dump = mesh
        .admin_json(&format!("/debug/config_dump?proxy={proxy}"))
        .unwrap();
    let t = &dump["types"][type_url];
    (
        t["version"].as_str().unwrap_or_default().to_string(),
        names(&t["resources"], &["name"]),
    )
}

/// The outbound route `timeout` Envoy has for a service host on its port's route config.
fn envoy_route_timeout(pod: &SidecarPod, svc: &str) -> Option<String> {
    let dump = pod.envoy_config_dump().ok()?;
    let routes = dump_section(&dump, "RoutesConfigDump");
    let port = service(svc).2.to_string();
    let rc = routes["dynamic_route_configs"]
        .as_array()?
        .iter()
        .map(|r| &r["route_config"])
        .find(|rc| rc["name"] == port.as_str())?;
    let vh = rc["virtual_hosts"].as_array()?.iter().find(|vh| {
        vh["domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d == fqdn(svc).as_str()))
    })?;
    vh["routes"][0]["route"]["timeout"]
        .as_str()
        .map(str::to_string)
}

/// Replaces the document `kind`/`name` of the VoiceCore config with `replacement` (or drops it).
fn voicecore_with(kind: &str, name: &str, replacement: Option<&str>) -> String {
    let mut found = false;
    let docs: Vec<String> = VOICECORE
        .split("\n---\n")
        .filter_map(|doc| {
            let this = doc.contains(&format!("\nkind: {kind}\n"))
                && doc.contains(&format!("\n  name: {name}\n"));
            if this {
                found = true;
                replacement.map(|r| r.trim_end().to_string())
            } else {
                Some(doc.trim_end().to_string())
            }
        })
        .collect();
    assert!(found, "no {kind} {name} in the VoiceCore config");
    docs.join("\n---\n") + "\n"
}

#[test]
fn a_calls_b_by_name_over_mtls_and_b_sees_a_identity() {
    let mesh = voicecore_mesh("wsab");
    let a = service_pod(&mesh, "call-service");
    let b = service_pod(&mesh, "billing-service");

    // The name resolves through the pod's hosts file to the VIP, not to B's pod.
    let out = a
        .run(["getent", "hosts", &fqdn("billing-service")])
        .unwrap();
    assert!(out.starts_with("10.96.0.17"), "{out}");

    let (status, body) = get_json(&a, &url("billing-service", "/invoices?id=7")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "billing-service-v1", "{body}");
    assert_eq!(body["path"], "/invoices", "{body}");
    assert_eq!(body["caller"], spiffe("call-service"), "{body}");
    // Envoy adds exactly one XFCC element, with B's own identity as By= and A's as URI=.
    let xfcc = body["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains(&format!("By={}", spiffe("billing-service"))),
        "{xfcc}"
    );
    assert!(!xfcc.contains(','), "one element only: {xfcc}");

    // The other direction works too, with the other identity.
    let (status, body) = get_json(&b, &url("call-service", "/")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["caller"], spiffe("billing-service"), "{body}");

    // A forged XFCC from the caller is not trusted: A's sidecar sanitizes it.
    let r = a
        .request(
            "GET",
            &url("billing-service", "/"),
            &[(
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/voicecore-ai/sa/admin",
            )],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["caller"], spiffe("call-service"));

    // The traffic went through both sidecars over mTLS: A's outbound cluster and B's inbound
    // mTLS chain counted it.
    let out_cluster = "cluster.outbound|8007||billing-service.voicecore-ai.svc.cluster.local";
    let stat = |name: String| envoy_stat(&a, &name).unwrap_or_else(|e| panic!("{e:#}"));
    let sent = stat(format!("{out_cluster}.upstream_rq_200"));
    assert!(sent >= 2, "A's outbound cluster saw {sent} 200s");
    let handshakes = stat(format!("{out_cluster}.ssl.handshake"));
    assert!(handshakes >= 1, "A's upstream to B used no TLS");
}

#[test]
fn a_client_without_sidecar_is_refused_under_strict() {
    let mesh = voicecore_mesh("wsstrict");
    let a = service_pod(&mesh, "call-service");
    let b = service_pod(&mesh, "billing-service");
    let plain = mesh.add_plain_pod("plain", ip(50)).unwrap();

    // The mesh path works...
    assert_eq!(status_of(&a, &url("billing-service", "/")), 200);
    // ...but plaintext straight to B's pod does not: STRICT has no plaintext chain, so Envoy
    // accepts and then closes the connection without a response (not left hanging, not
    // refused by the kernel: the capture rules hand it to Envoy).
    let direct = format!("http://{}:8007/", b.ip());
    let refusal = expect_no_answer(&plain.get(&direct));
    assert!(
        refusal.is_reset_or_closed(),
        "plaintext {direct}: want a reset or close by B's Envoy, got {refusal:?}"
    );
    // A TLS client without a mesh certificate is refused as well: B's Envoy demands a client
    // certificate (its counter below says that is why). Under TLS 1.3 curl has finished its
    // side of the handshake by then and learns of the refusal when it next writes or reads
    // (HTTP/2 send 16, send 55, receive 56) or, earlier, in the handshake (35): a failure after
    // connecting, never a timeout or a refused connection.
    let url = format!("https://{}:8007/", b.ip());
    let out = curl_in(
        &plain,
        &["-k", "-o", "/dev/null", "-w", "%{http_code}", &url],
    );
    assert!(
        out.stdout == "000"
            && matches!(
                out.exit,
                Some(
                    curl_exit::HTTP2
                        | curl_exit::SSL_CONNECT_ERROR
                        | curl_exit::SEND_ERROR
                        | curl_exit::RECV_ERROR
                )
            ),
        "TLS without a client certificate: {out:?}"
    );
    // B's inbound listener refused both: no plaintext chain, and no client certificate.
    let b_stat = |name: &str| envoy_stat(&b, name).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        b_stat("listener.0.0.0.0_15006.no_filter_chain_match") >= 1,
        "the plaintext connection did not hit B's inbound listener"
    );
    assert!(
        b_stat("listener.0.0.0.0_15006.ssl.fail_verify_no_cert") >= 1,
        "the TLS connection without a certificate was not refused for it"
    );
    // B's sidecar saw and refused them; the app never did.
    let app_log = mesh.app_log(&b.name);
    assert!(
        !app_log.contains("10.44.0.50"),
        "the app saw the plain client: {app_log}"
    );
}

#[test]
fn envoy_config_dump_holds_what_meshd_sent() {
    let mesh = voicecore_mesh("wsdump");
    let a = service_pod(&mesh, "call-service");
    let _b = service_pod(&mesh, "billing-service");
    let id = proxy_id("call-service");
    wait_synced(&mesh, &[id.clone(), proxy_id("billing-service")]);

    let dump = a.envoy_config_dump().unwrap();

    // Listeners: the capture listeners, a per-port outbound listener per service port.
    let listeners = dump_section(&dump, "ListenersConfigDump");
    let envoy_listeners = names(&listeners["dynamic_listeners"], &["name"]);
    for l in [
        "virtualOutbound",
        "virtualInbound",
        "0.0.0.0_8007",
        "0.0.0.0_8000",
    ] {
        assert!(
            envoy_listeners.contains(l),
            "no listener {l}: {envoy_listeners:?}"
        );
    }
    let active = names(
        &listeners["dynamic_listeners"],
        &["active_state", "listener", "name"],
    );
    assert_eq!(
        active, envoy_listeners,
        "every listener active (none warming)"
    );
    let (lds_version, sent) = meshd_sent(&mesh, &id, LISTENERS);
    assert_eq!(
        envoy_listeners, sent,
        "Envoy's listeners are the ones meshd sent"
    );
    assert_eq!(listeners["version_info"], lds_version.as_str());
    let outbound = listeners["dynamic_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "virtualOutbound")
        .unwrap();
    let outbound = &outbound["active_state"]["listener"];
    assert_eq!(outbound["address"]["socket_address"]["port_value"], 15001);
    assert_eq!(outbound["use_original_dst"], true);
    let inbound = listeners["dynamic_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "virtualInbound")
        .unwrap();
    let inbound = &inbound["active_state"]["listener"];
    assert_eq!(inbound["address"]["socket_address"]["port_value"], 15006);
    // STRICT: the app port's only chain is TLS, with client certificates required.
    let chains = inbound["filter_chains"].as_array().unwrap();
    let app_chains: Vec<&Value> = chains
        .iter()
        .filter(|c| c["filter_chain_match"]["destination_port"] == 8002)
        .collect();
    assert_eq!(app_chains.len(), 1, "{chains:#?}");
    assert_eq!(
        app_chains[0]["filter_chain_match"]["transport_protocol"],
        "tls"
    );
    let tls = &app_chains[0]["transport_socket"]["typed_config"];
    assert_eq!(tls["require_client_certificate"], true, "{tls:#}");

    // Clusters: one outbound cluster per service port, with ISTIO_MUTUAL to the service's
    // identity.
    let clusters = dump_section(&dump, "ClustersConfigDump");
    let envoy_clusters = names(&clusters["dynamic_active_clusters"], &["cluster", "name"]);
    let billing = format!("outbound|8007||{}", fqdn("billing-service"));
    for (s, _, port) in SERVICES {
        let c = format!("outbound|{port}||{}", fqdn(s));
        assert!(
            envoy_clusters.contains(&c),
            "no cluster {c}: {envoy_clusters:?}"
        );
    }
    let (cds_version, sent) = meshd_sent(&mesh, &id, CLUSTERS);
    assert_eq!(
        envoy_clusters, sent,
        "Envoy's dynamic clusters are the ones meshd sent"
    );
    assert_eq!(clusters["version_info"], cds_version.as_str());
    let bc = clusters["dynamic_active_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["cluster"])
        .find(|c| c["name"] == billing.as_str())
        .unwrap();
    let up = bc["transport_socket"]["typed_config"].to_string();
    assert!(up.contains(&spiffe("billing-service")), "{up}");
    assert_eq!(
        bc["transport_socket"]["typed_config"]["sni"],
        "outbound_.8007_._.billing-service.voicecore-ai.svc.cluster.local",
        "{up}"
    );

    // Endpoints: B's pod behind the billing cluster.
    let eps = dump_section(&dump, "EndpointsConfigDump");
    let billing_eps = eps["dynamic_endpoint_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["endpoint_config"])
        .find(|e| e["cluster_name"] == billing.as_str())
        .unwrap_or_else(|| panic!("no endpoints for {billing}: {eps:#}"));
    assert!(
        billing_eps
            .to_string()
            .contains("\"address\":\"10.44.0.17\""),
        "{billing_eps:#}"
    );

    // Routes: the port's route config names the service host.
    let routes = dump_section(&dump, "RoutesConfigDump");
    let envoy_routes = names(&routes["dynamic_route_configs"], &["route_config", "name"]);
    let (_, sent) = meshd_sent(&mesh, &id, ROUTES);
    assert_eq!(envoy_routes, sent, "Envoy's routes are the ones meshd sent");
    assert_eq!(
        envoy_route_timeout(&a, "billing-service").as_deref(),
        Some("30s")
    );

    // Secrets: the workload certificate and the root, from SDS.
    let secrets = dump_section(&dump, "SecretsConfigDump");
    let envoy_secrets = names(&secrets["dynamic_active_secrets"], &["name"]);
    assert_eq!(
        envoy_secrets,
        BTreeSet::from(["default".to_string(), "ROOTCA".to_string()]),
        "{secrets:#}"
    );
    let (_, sent) = meshd_sent(&mesh, &id, SECRETS);
    assert_eq!(envoy_secrets, sent);
    // meshd's own dump never shows key material.
    let meshd_dump = mesh
        .admin_get(&format!("/debug/config_dump?proxy={id}"))
        .unwrap()
        .1;
    assert!(
        !meshd_dump.contains("PRIVATE KEY"),
        "meshd dumps a private key"
    );

    // The certificate Envoy serves carries exactly the workload's SPIFFE ID.
    let (s, certs) = a.envoy_admin("/certs").unwrap();
    assert_eq!(s, 200);
    let certs: Value = serde_json::from_str(&certs).unwrap();
    let chain = &certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cert_chain"].as_array().is_some_and(|v| !v.is_empty()))
        .unwrap_or_else(|| panic!("no workload cert in /certs: {certs:#}"))["cert_chain"][0];
    let sans: Vec<&str> = chain["subject_alt_names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["uri"].as_str())
        .collect();
    assert_eq!(sans, [spiffe("call-service").as_str()], "{chain:#}");
    // ...issued by the mesh root meshd reports.
    let root_serials: Vec<String> = mesh
        .admin_json("/debug/certs")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "root")
        .filter_map(|c| c["serial"].as_str().map(str::to_lowercase))
        .collect();
    let norm = |s: &str| s.to_lowercase().trim_start_matches('0').to_string();
    let envoy_roots: Vec<String> = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ca_cert"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["serial_number"].as_str().map(norm))
        .collect();
    assert!(
        !envoy_roots.is_empty(),
        "no CA in Envoy's /certs: {certs:#}"
    );
    let meshd_roots: Vec<String> = root_serials.iter().map(|s| norm(s)).collect();
    for r in &envoy_roots {
        assert!(
            meshd_roots.contains(r),
            "Envoy trusts {r}, not meshd's root {meshd_roots:?}"
        );
    }
}

/// `max_connections` of the billing cluster in a sidecar's Envoy (active clusters only).
fn billing_max_connections(pod: &SidecarPod) -> Option<u64> {
    let dump = pod.envoy_config_dump().ok()?;
    let clusters = dump_section(&dump, "ClustersConfigDump");
    let billing = format!("outbound|8007||{}", fqdn("billing-service"));
    clusters["dynamic_active_clusters"]
        .as_array()?
        .iter()
        .map(|c| &c["cluster"])
        .find(|c| c["name"] == billing.as_str())?["circuit_breakers"]["thresholds"][0]
        ["max_connections"]
        .as_u64()
}

/// Seconds since this Envoy (re)started.
fn envoy_uptime(pod: &SidecarPod) -> u64 {
    let (_, info) = pod.envoy_admin("/server_info").unwrap();
    let v: Value = serde_json::from_str(&info).unwrap();
    v["uptime_current_epoch"]
        .as_str()
        .and_then(|s| s.trim_end_matches('s').parse::<u64>().ok())
        .unwrap_or(0)
}

#[test]
fn route_and_policy_changes_on_disk_reach_envoy_live() {
    // How long a change on disk may take to be in force in Envoy: well under Envoy's 15 s
    // initial fetch timeout, so a resource left warming (waiting for xDS that never comes)
    // fails here instead of slipping through late.
    const PUSH: Duration = Duration::from_secs(5);
    let mesh = voicecore_mesh("wslive");
    // One client on Delta ADS (the default), one on state of the world.
    let a = service_pod(&mesh, "call-service");
    let c = mesh
        .add_sidecar_pod_with(
            &format!("crm-service-v1.{NS}"),
            ip(14),
            8004,
            SidecarOptions {
                bootstrap_args: vec!["--delta=false".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let _b = service_pod(&mesh, "billing-service");
    let clients = [&a, &c];
    let target = url("billing-service", "/");
    for p in clients {
        assert_eq!(status_of(p, &target), 200);
        assert_eq!(
            envoy_route_timeout(p, "billing-service").as_deref(),
            Some("30s")
        );
        assert_eq!(billing_max_connections(p), Some(100));
    }
    let changes_started = std::time::Instant::now();

    // 1. A timeout change in the VirtualService.
    let vs = |extra: &str, timeout: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: billing-service
  namespace: voicecore-ai
spec:
  hosts:
  - billing-service.voicecore-ai.svc.cluster.local
  http:
  - route:
    - destination:
        host: billing-service.voicecore-ai.svc.cluster.local
        port:
          number: 8007
    timeout: {timeout}
{extra}"
        )
    };
    mesh.write_config(
        "voicecore.yaml",
        &voicecore_with("VirtualService", "billing-service", Some(&vs("", "7s"))),
    )
    .unwrap();
    for p in clients {
        wait_for(PUSH, "the new route timeout in Envoy's config_dump", || {
            envoy_route_timeout(p, "billing-service").as_deref() == Some("7s")
        })
        .unwrap();
        assert_eq!(status_of(p, &target), 200);
    }

    // 2. A fault abort: every call now answers 418, from the caller's own sidecar.
    let abort = "    fault:
      abort:
        percentage:
          value: 100
        httpStatus: 418
";
    mesh.write_config(
        "voicecore.yaml",
        &voicecore_with("VirtualService", "billing-service", Some(&vs(abort, "7s"))),
    )
    .unwrap();
    for p in clients {
        wait_for(PUSH, "the call to answer 418", || {
            status_of(p, &target) == 418
        })
        .unwrap();
        let dump = p.envoy_config_dump().unwrap().to_string();
        assert!(
            dump.contains("\"http_status\":418"),
            "no abort in Envoy's routes"
        );
        for _ in 0..3 {
            assert_eq!(status_of(p, &target), 418);
        }
    }
    // Other services are untouched.
    assert_eq!(status_of(&a, &url("crm-service", "/")), 200);

    // 3. Removing the fault restores 200.
    mesh.write_config("voicecore.yaml", VOICECORE).unwrap();
    for p in clients {
        wait_for(PUSH, "the call to answer 200 again", || {
            status_of(p, &target) == 200
        })
        .unwrap();
        assert_eq!(
            envoy_route_timeout(p, "billing-service").as_deref(),
            Some("30s")
        );
    }

    // 4. A DestinationRule change: the billing cluster's circuit breaker follows. Envoy warms
    // an updated cluster until it gets its endpoints again, so meshd must resend them.
    let dr = VOICECORE
        .split("\n---\n")
        .find(|d| {
            d.contains("\nkind: DestinationRule\n") && d.contains("\n  name: billing-service\n")
        })
        .unwrap()
        .replace("maxConnections: 100", "maxConnections: 42");
    mesh.write_config(
        "voicecore.yaml",
        &voicecore_with("DestinationRule", "billing-service", Some(&dr)),
    )
    .unwrap();
    for p in clients {
        let moved = wait_for(
            PUSH,
            "max_connections 42 in the active billing cluster",
            || billing_max_connections(p) == Some(42),
        );
        if let Err(e) = moved {
            let dump = p.envoy_config_dump().unwrap();
            let clusters = dump_section(&dump, "ClustersConfigDump");
            let warming = names(&clusters["dynamic_warming_clusters"], &["cluster", "name"]);
            panic!("{}: {e}; clusters still warming: {warming:?}", p.name);
        }
        assert_eq!(status_of(p, &target), 200);
    }
    // Only billing's endpoints were resent (SotW EDS carries what changed): the other
    // clusters keep theirs.
    assert_eq!(status_of(&a, &url("crm-service", "/")), 200);

    // All of it without restarting Envoy or meshd.
    for p in clients {
        assert!(
            envoy_uptime(p) >= changes_started.elapsed().as_secs(),
            "{}'s Envoy restarted",
            p.name
        );
    }
    assert!(mesh.control_plane_running());
    assert_eq!(mesh.control_plane_log().matches("meshd ready").count(), 1);
}

#[test]
fn bad_input_is_rejected_per_document_and_the_rest_keeps_serving() {
    let mesh = voicecore_mesh("wsbad");
    let a = service_pod(&mesh, "call-service");
    let _b = service_pod(&mesh, "billing-service");
    let target = url("billing-service", "/");
    assert_eq!(status_of(&a, &target), 200);
    let accepted_before = mesh.admin_json("/debug/configz").unwrap()["accepted"]
        .as_array()
        .unwrap()
        .len();

    // Malformed YAML: `key: value: value` on line 14 (second document). Only that document
    // is rejected; the first one is accepted.
    let malformed = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: fine-on-its-own
  namespace: voicecore-ai
spec: {host: nonexistent.voicecore-ai.svc.cluster.local}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: broken
  namespace: voicecore-ai
spec:
  hosts: billing: oops
";
    // An unknown kind, second document: `kind:` on line 12. The first document is accepted.
    let unknown_kind = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ai-extra
  namespace: voicecore-ai
spec:
  host: nonexistent.voicecore-ai.svc.cluster.local
---
# a different kind of object
apiVersion: networking.istio.io/v1
metadata: {name: f, namespace: voicecore-ai}
kind: Frobnicator
spec: {}
";
    // An Istio field meshd does not support (DestinationRule trafficPolicy.tunnel), line 9.
    let unsupported = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tunnelled
  namespace: voicecore-ai
spec:
  host: crm-service.voicecore-ai.svc.cluster.local
  trafficPolicy:
    tunnel:
      protocol: CONNECT
      targetHost: example.com
      targetPort: 8443
";
    mesh.write_config("malformed.yaml", malformed).unwrap();
    mesh.write_config("unknown-kind.yaml", unknown_kind)
        .unwrap();
    mesh.write_config("unsupported.yaml", unsupported).unwrap();

    let mut configz = Value::Null;
    wait_for(TIMEOUT, "three rejections in /debug/configz", || {
        configz = mesh.admin_json("/debug/configz").unwrap_or_default();
        configz["rejected"].as_array().is_some_and(|r| r.len() >= 3)
    })
    .unwrap_or_else(|e| panic!("{e}: {configz:#}"));
    let rejected = configz["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 3, "{configz:#}");
    let config_dir = mesh.config_dir().to_path_buf();
    let find = |file: &str| -> &Value {
        let path = config_dir.join(file).display().to_string();
        rejected
            .iter()
            .find(|r| r["file"] == path.as_str())
            .unwrap_or_else(|| panic!("{file} not rejected: {configz:#}"))
    };
    for (file, line, reason) in [
        ("malformed.yaml", 14, "mapping values are not allowed"),
        ("unknown-kind.yaml", 12, "Frobnicator"),
        ("unsupported.yaml", 9, "tunnel"),
    ] {
        let r = find(file);
        assert_eq!(r["line"], line, "{file}: {r:#}");
        let message = r["message"].as_str().unwrap_or_default();
        let path = config_dir.join(file).display().to_string();
        assert!(
            message.starts_with(&format!("{path}:{line}: ")),
            "{file}: message is not file:line: reason: {message}"
        );
        assert!(
            r["reason"].as_str().unwrap_or_default().contains(reason),
            "{file}: {r:#}"
        );
    }
    // The good documents of those files, and all of VoiceCore, are accepted.
    let accepted = configz["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), accepted_before + 2, "{configz:#}");
    for (name, next_to) in [
        ("ai-extra", "the unknown kind"),
        ("fine-on-its-own", "the syntax error"),
    ] {
        assert!(
            accepted.iter().any(|o| o["name"] == name),
            "the good document next to {next_to} was lost"
        );
    }

    // The good config keeps serving, through a push triggered by the change, and the process
    // keeps running.
    assert_eq!(status_of(&a, &target), 200);
    assert!(mesh.control_plane_running());
    assert!(mesh.control_plane_ready());
    let log = mesh.control_plane_log();
    assert!(
        log.contains("malformed.yaml:14"),
        "the rejection is logged with file:line: {}",
        tail(&log, 40)
    );

    // Rejected files are reported once per change: a later change elsewhere in the dir (taken
    // in: its object is accepted) does not report the unchanged broken file again.
    let count = |log: &str| log.matches("malformed.yaml:14").count();
    let before = count(&mesh.control_plane_log());
    mesh.write_config(
        "later.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: later-change, namespace: voicecore-ai}
spec: {host: nonexistent.voicecore-ai.svc.cluster.local}
",
    )
    .unwrap();
    wait_for(TIMEOUT, "later.yaml accepted in /debug/configz", || {
        mesh.admin_json("/debug/configz").unwrap()["accepted"]
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o["name"] == "later-change"))
    })
    .unwrap();
    let after = count(&mesh.control_plane_log());
    assert_eq!(
        before, after,
        "meshd reported the unchanged malformed.yaml again on a later change"
    );

    // A syntax error added to VoiceCore's own file rejects that document only: the file's
    // other documents stay in force.
    // (A third pod is bootstrapped first: `meshd bootstrap` reads the config dir on its own.)
    let crm = service_pod(&mesh, "crm-service");
    mesh.write_config(
        "voicecore.yaml",
        &format!("{VOICECORE}\n---\nkind: [unclosed\n"),
    )
    .unwrap();
    let mut configz = Value::Null;
    wait_for(TIMEOUT, "the broken voicecore.yaml in rejected", || {
        configz = mesh.admin_json("/debug/configz").unwrap_or_default();
        configz["rejected"].as_array().is_some_and(|r| r.len() == 4)
    })
    .unwrap_or_else(|e| panic!("{e}: {configz:#}"));
    let voicecore_path = config_dir.join("voicecore.yaml").display().to_string();
    let broken = configz["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"] == voicecore_path.as_str())
        .unwrap();
    // The unclosed flow sequence opens on line 781.
    assert_eq!(broken["line"], 781, "{broken:#}");
    assert!(
        broken["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unclosed bracket") && !r.contains(" at line ")),
        "{broken:#}"
    );
    assert_eq!(
        configz["accepted"].as_array().unwrap().len(),
        accepted_before + 3,
        "the broken file's other documents stay in force"
    );
    assert_eq!(status_of(&a, &target), 200);

    // A proxy (re)connecting now still gets the full config from the last good content.
    mesh.restart_envoy(&crm.name).unwrap();
    assert_eq!(status_of(&crm, &target), 200);
    wait_synced(
        &mesh,
        &[
            proxy_id("call-service"),
            proxy_id("billing-service"),
            proxy_id("crm-service"),
        ],
    );
}

#[test]
fn proxy_status_lists_every_proxy_synced() {
    let mesh = voicecore_mesh("wsps");
    let ids = [proxy_id("call-service"), proxy_id("billing-service")];
    let _a = service_pod(&mesh, "call-service");
    let _b = service_pod(&mesh, "billing-service");
    wait_synced(&mesh, &ids);

    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let out = mesh
        .node()
        .run([meshd.as_str(), "proxy-status", "--admin", &mesh.admin_url()])
        .unwrap();
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CDS", "LDS", "EDS", "RDS", "SDS", "IDENTITY"],
        "{out}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    for (id, sa) in ids.iter().zip(["call-service", "billing-service"]) {
        let row = rows
            .iter()
            .find(|r| r[0] == id.as_str())
            .unwrap_or_else(|| panic!("no row for {id}:\n{out}"));
        assert_eq!(row[1..6], ["SYNCED"; 5], "{out}");
        assert_eq!(row[6], spiffe(sa), "{out}");
    }
}
