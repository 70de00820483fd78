//! DestinationRule `loadBalancer.warmup` as Envoy's slow start, in stock Envoy: the client's
//! cluster carries the window, and an endpoint that joins while another is past its window gets
//! a small share of round-robin traffic instead of half of it.

use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;
/// Short enough that the first endpoint leaves it before the second joins, long enough that
/// the second is still early in it while the requests run.
const WINDOW: Duration = Duration::from_secs(20);

#[test]
fn a_new_endpoint_takes_a_small_share_until_its_window_ends() {
    let host = fqdn("backend");
    let dr = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {{duration: {}s, minimumPercent: 5, aggression: 1.0}}
"#,
        WINDOW.as_secs()
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        service("backend", vip(20), PORT),
        workload("backend-old", "backend", ip(20), &[]),
        dr,
    ]
    .concat();
    let mesh = mesh("slowstart", &yaml, &[(host.clone(), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let _old = mesh
        .add_sidecar_pod(&format!("backend-old.{NS}"), ip(20), PORT)
        .unwrap();
    let url = format!("http://{host}:{PORT}/");
    let cluster = format!("outbound|{PORT}||{host}");

    // Envoy's cluster: round robin with the window, the minimum and the aggression asked for.
    let c = &dump_clusters(&client.envoy_config_dump().unwrap())[&cluster];
    let slow = &c["round_robin_lb_config"]["slow_start_config"];
    assert_eq!(slow["slow_start_window"], "20s", "{c}");
    assert_eq!(
        slow["min_weight_percent"]["value"].as_f64(),
        Some(5.0),
        "{c}"
    );
    assert_eq!(
        slow["aggression"]["default_value"].as_f64(),
        Some(1.0),
        "{c}"
    );
    let a = get(&client, &url);
    assert_eq!(a.service(), "backend-old", "{a:?}");

    // The old endpoint joined the client's cluster with it: let its own window pass.
    std::thread::sleep(WINDOW + Duration::from_secs(2));

    // A second endpoint joins.
    mesh.write_config(
        "backend-new.yaml",
        &workload("backend-new", "backend", ip(21), &[]),
    )
    .unwrap();
    let _new = mesh
        .add_sidecar_pod(&format!("backend-new.{NS}"), ip(21), PORT)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || get(&client, &url).service()
            == "backend-new"),
        "the new endpoint never answered"
    );

    // Early in its window (a few seconds of 20, at least 5 % of its weight): far less than the
    // half plain round robin gives it. Sequential requests, so each is one pick.
    let answers = burst(&client, &url, &[], 60, 1);
    assert!(answers.iter().all(|a| a.status == 200), "{answers:#?}");
    let new = answers
        .iter()
        .filter(|a| a.service() == "backend-new")
        .count();
    eprintln!("measurement: slow start: the new endpoint took {new} of 60 requests");
    assert!(
        (1..=21).contains(&new),
        "the new endpoint took {new} of 60 requests early in its slow-start window (plain round robin: 30)"
    );
}
