//! No debug output ever carries private key material: for every proxy of the mesh, SotW and
//! Delta alike, once each holds its certificate and key over SDS, neither the admin API
//! (`/debug/*`, `/metrics`) nor `meshd proxy-config` / `meshd proxy-status` shows a key, in
//! PEM, in base64 of the PEM (how JSON renders `inline_bytes`) or in hex.

use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use meshd::testing::TestServer;
use meshd_xds::Proxy;
use meshd_xds::resource::{CLUSTER, LISTENER, SECRET};
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

fn private_key(resource: &[u8]) -> Option<String> {
    let secret = Secret::decode(resource).ok()?;
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        return None;
    };
    match tls.private_key?.specifier? {
        Specifier::InlineBytes(b) => String::from_utf8(b).ok(),
        Specifier::InlineString(s) => Some(s),
        _ => None,
    }
}

/// Every way a key could show in a text: the PEM's body lines, base64 of the PEM in aligned
/// chunks, hex of its DER in aligned chunks.
fn fingerprints(pem: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    let der = b64.decode(body.concat()).expect("a PEM body");
    let mut out: Vec<String> = body.iter().map(|l| l.to_string()).collect();
    let of_pem = b64.encode(pem.as_bytes());
    out.extend(
        of_pem
            .as_bytes()
            .chunks(32)
            .map(|c| String::from_utf8_lossy(c).into()),
    );
    out.extend(
        der.chunks(16)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    );
    out.retain(|f| f.len() >= 16);
    out
}

/// The first sign of key material in `text`, if any.
fn key_material(text: &str, keys: &[Vec<String>]) -> Option<String> {
    for marker in ["PRIVATE KEY", "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t"] {
        if text.contains(marker) {
            return Some(format!("`{marker}`"));
        }
    }
    keys.iter().enumerate().find_map(|(i, prints)| {
        prints
            .iter()
            .find(|p| text.contains(p.as_str()))
            .map(|p| format!("key {i} (`{p}`)"))
    })
}

#[test]
fn the_detector_sees_every_form_of_a_key() {
    let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsaEHwQ7cm94uPWA7\na6GQKoPP9ZVdW7h0QsdZCjdaUwuhRANCAARV0/xfaXEXKwkXMe2bTmTaQVtt0ChL\n-----END PRIVATE KEY-----\n";
    let keys = vec![fingerprints(pem)];
    let b64 = base64::engine::general_purpose::STANDARD;
    let der = b64
        .decode("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsaEHwQ7cm94uPWA7a6GQKoPP9ZVdW7h0QsdZCjdaUwuhRANCAARV0/xfaXEXKwkXMe2bTmTaQVtt0ChL")
        .unwrap();
    let body_only = pem.lines().nth(1).unwrap().to_string();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    let json_bytes = format!(r#"{{"inline_bytes":"{}"}}"#, b64.encode(pem));
    for form in [pem.to_string(), body_only, hex, json_bytes] {
        assert!(key_material(&form, &keys).is_some(), "missed: {form}");
    }
    assert!(key_material(r#"{"inline_bytes":"W3JlZGFjdGVkXQ=="}"#, &keys).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_debug_output_carries_private_key_material_for_any_proxy() {
    let server = TestServer::start(None).await.unwrap();
    let mesh = meshd::source::FileSource::new(None).reload();
    assert!(mesh.workloads.len() >= 8, "the VoiceCore mesh");
    let client = AggregatedDiscoveryServiceClient::connect(server.xds_url())
        .await
        .unwrap();
    let mut keys = Vec::new();
    let mut proxies = Vec::new();
    // Streams stay open (their senders held) while the outputs are read.
    let mut open_sotw = Vec::new();
    let mut open_delta = Vec::new();
    for (i, w) in mesh.workloads.iter().enumerate() {
        let proxy = Proxy::for_workload(w, "cluster.local");
        let credential = server.credential(&w.name, &w.namespace, &w.service_account);
        let node = Some(Node {
            id: proxy.id.clone(),
            ..Default::default()
        });
        let mut client = client.clone();
        let key = if i % 2 == 0 {
            let (tx, rx) = mpsc::channel(8);
            for type_url in [CLUSTER, LISTENER, SECRET] {
                tx.send(DiscoveryRequest {
                    node: node.clone(),
                    type_url: type_url.into(),
                    resource_names: if type_url == SECRET {
                        vec!["default".into(), "ROOTCA".into()]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {credential}").parse().unwrap(),
            );
            let mut stream = client
                .stream_aggregated_resources(req)
                .await
                .unwrap()
                .into_inner();
            let key = loop {
                let resp = tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .expect("SDS within 30 s")
                    .expect("stream open")
                    .unwrap_or_else(|e| panic!("{}: {e}", proxy.id));
                if let Some(k) = resp.resources.iter().find_map(|r| private_key(&r.value)) {
                    break k;
                }
            };
            open_sotw.push((tx, stream));
            key
        } else {
            let (tx, rx) = mpsc::channel(8);
            for type_url in [CLUSTER, LISTENER, SECRET] {
                tx.send(DeltaDiscoveryRequest {
                    node: node.clone(),
                    type_url: type_url.into(),
                    resource_names_subscribe: if type_url == SECRET {
                        vec!["default".into(), "ROOTCA".into()]
                    } else {
                        vec!["*".into()]
                    },
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {credential}").parse().unwrap(),
            );
            let mut stream = client
                .delta_aggregated_resources(req)
                .await
                .unwrap()
                .into_inner();
            let key = loop {
                let resp = tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .expect("SDS within 30 s")
                    .expect("stream open")
                    .unwrap_or_else(|e| panic!("{}: {e}", proxy.id));
                if let Some(k) = resp
                    .resources
                    .iter()
                    .filter_map(|r| r.resource.as_ref())
                    .find_map(|r| private_key(&r.value))
                {
                    break k;
                }
            };
            open_delta.push((tx, stream));
            key
        };
        assert!(key.contains("PRIVATE KEY"), "SDS carries the key itself");
        keys.push(fingerprints(&key));
        proxies.push(proxy.id);
    }

    let admin = server.admin_url();
    let get = |path: String| {
        let url = format!("{admin}{path}");
        async move {
            let resp = reqwest::get(&url).await.unwrap();
            assert!(resp.status().is_success(), "{url}: {}", resp.status());
            resp.text().await.unwrap()
        }
    };
    let mut outputs = Vec::new();
    for path in [
        "/debug/syncz",
        "/debug/certs",
        "/debug/registryz",
        "/debug/configz",
        "/debug/ca/rotate-root",
        "/metrics",
        "/version",
    ] {
        outputs.push((path.to_string(), get(path.to_string()).await));
    }
    let meshd = env!("CARGO_BIN_EXE_meshd");
    for id in &proxies {
        let path = format!("/debug/config_dump?proxy={}", urlencode(id));
        let dump = get(path.clone()).await;
        assert!(
            dump.contains("default"),
            "{path} shows the SDS secret (redacted)"
        );
        outputs.push((path, dump));
        for output in ["json", "table"] {
            let out = tokio::process::Command::new(meshd)
                .args([
                    "proxy-config",
                    id,
                    "--admin",
                    &server.admin_url(),
                    "-o",
                    output,
                ])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "proxy-config {id} -o {output}");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            outputs.push((format!("meshd proxy-config {id} -o {output}"), text));
        }
    }
    let status = tokio::process::Command::new(meshd)
        .args(["proxy-status", "--admin", &server.admin_url()])
        .output()
        .await
        .unwrap();
    assert!(status.status.success());
    outputs.push((
        "meshd proxy-status".into(),
        String::from_utf8_lossy(&status.stdout).into_owned(),
    ));
    for (what, text) in &outputs {
        if let Some(found) = key_material(text, &keys) {
            panic!("{what} carries {found}");
        }
    }
    assert_eq!(open_sotw.len() + open_delta.len(), mesh.workloads.len());
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
