//! Locality failover (DestinationRule `localityLbSetting` with outlierDetection), proven with
//! stock Envoy sidecars: a client in r1/z1 prefers the endpoint in its own zone, moves to the
//! other region's endpoint when the local one fails, and comes back when it recovers.

use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

/// A WorkloadEntry with a `locality` field.
fn located(name: &str, app: &str, host: u8, locality: &str) -> String {
    workload(name, app, ip(host), &[]).replace(
        &format!("  serviceAccount: {app}\n"),
        &format!("  serviceAccount: {app}\n  locality: {locality}\n"),
    )
}

/// The priority and `region/zone` of each endpoint group Envoy holds for `cluster`.
fn envoy_groups(client: &SidecarPod, cluster: &str) -> Vec<(u64, String, String)> {
    let dump = client.envoy_config_dump().unwrap();
    let eps = dump_section(&dump, "EndpointsConfigDump");
    let config = eps["dynamic_endpoint_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["endpoint_config"])
        .find(|e| e["cluster_name"] == cluster)
        .unwrap_or_else(|| panic!("no endpoints for {cluster}: {eps:#}"))
        .clone();
    let mut groups: Vec<(u64, String, String)> = config["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let l = &g["locality"];
            let address = g["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (
                g["priority"].as_u64().unwrap_or(0),
                format!(
                    "{}/{}",
                    l["region"].as_str().unwrap_or(""),
                    l["zone"].as_str().unwrap_or("")
                ),
                address,
            )
        })
        .collect();
    groups.sort();
    groups
}

/// A client in r1/z1 and `backend` with one endpoint there and one in r2/z2, under `dr`.
fn client_and_two_zones(dr: &str) -> String {
    [
        service("client", vip(10), PORT),
        located("client", "client", 10, "r1/z1"),
        service("backend", vip(20), PORT),
        located("backend-local", "backend", 20, "r1/z1"),
        located("backend-remote", "backend", 21, "r2/z2"),
        dr.to_string(),
    ]
    .concat()
}

/// The three pods of [`client_and_two_zones`]; the client's.
fn start_pods(mesh: &Mesh) -> SidecarPod {
    for (name, host) in [("backend-local", 20), ("backend-remote", 21)] {
        mesh.add_sidecar_pod(&format!("{name}.{NS}"), ip(host), PORT)
            .unwrap();
    }
    mesh.add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap()
}

#[test]
fn failover_moves_to_the_next_locality_and_back() {
    let host = fqdn("backend");
    let dr = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 100ms
      baseEjectionTime: 1s
      maxEjectionPercent: 100
    loadBalancer:
      localityLbSetting:
        failover: [{{from: r1, to: r2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}}}
    retries: {{attempts: 0}}
"#
    );
    let yaml = client_and_two_zones(&dr);
    let mesh = mesh("locality", &yaml, &[(host.clone(), vip(20))]);
    let client = start_pods(&mesh);
    let url = format!("http://{host}:{PORT}/");
    let cluster = format!("outbound|{PORT}||{host}");

    // Envoy holds the two localities at two priorities, its own zone first.
    assert_eq!(
        envoy_groups(&client, &cluster),
        [
            (0, "r1/z1".to_string(), ip(20).to_string()),
            (1, "r2/z2".to_string(), ip(21).to_string()),
        ]
    );

    // Healthy: every request stays in the client's zone.
    let before = burst(&client, &url, &[], 20, 4);
    assert!(
        before
            .iter()
            .all(|a| a.status == 200 && a.service() == "backend-local"),
        "{before:#?}"
    );

    // The local endpoint fails: once it is ejected, the other region answers.
    mesh.stop_envoy("backend-local").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let a = get(&client, &url);
            a.status == 200 && a.service() == "backend-remote"
        }),
        "traffic never moved to r2/z2"
    );
    assert!(
        stat(
            &client,
            &format!("cluster.{cluster}.outlier_detection.ejections_enforced_total")
        ) >= 1
    );

    // It recovers: once its ejection ends, traffic is back in the client's zone.
    mesh.restart_envoy("backend-local").unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let a = get(&client, &url);
            a.status == 200 && a.service() == "backend-local"
        }),
        "traffic never came back to r1/z1"
    );
    let after = burst(&client, &url, &[], 20, 4);
    assert!(
        after
            .iter()
            .all(|a| a.status == 200 && a.service() == "backend-local"),
        "{after:#?}"
    );
}

/// Istio's mesh default (`localityLbSetting.enabled: true` in MeshConfig): a DestinationRule
/// with outlier detection and no locality setting still puts the proxy's own zone first; with
/// `meshd serve --locality-lb false` the two localities share one priority.
#[test]
fn outlier_detection_alone_prefers_the_local_zone_by_default() {
    let host = fqdn("backend");
    let dr = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 100ms, baseEjectionTime: 1s}}
"#
    );
    let yaml = client_and_two_zones(&dr);
    let cluster = format!("outbound|{PORT}||{host}");
    for (name, args, local_first) in [
        ("localitydef", &[][..], true),
        ("localityoff", &["--locality-lb", "false"][..], false),
    ] {
        let mut opts = MeshOptions::named(name).config("mesh.yaml", &yaml);
        for a in args {
            opts = opts.serve_arg(a);
        }
        let mesh = mesh_with(opts, &[(host.clone(), vip(20))]);
        let client = start_pods(&mesh);
        let remote_priority = if local_first { 1 } else { 0 };
        assert_eq!(
            envoy_groups(&client, &cluster),
            [
                (0, "r1/z1".to_string(), ip(20).to_string()),
                (remote_priority, "r2/z2".to_string(), ip(21).to_string()),
            ],
            "{name}"
        );
        let answers = burst(&client, &format!("http://{host}:{PORT}/"), &[], 20, 4);
        let local = answers
            .iter()
            .filter(|a| a.status == 200 && a.service() == "backend-local")
            .count();
        if local_first {
            assert_eq!(local, 20, "{name}: {answers:#?}");
        } else {
            assert!(local < 20, "{name}: one priority, both endpoints answer");
        }
    }
}
