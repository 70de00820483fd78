//! Which of Envoy's own stats a sidecar records: every stat by default; with a pod's
//! `proxyStatsMatcher` / `statsInclusion*` (here given to `meshd bootstrap --stats-matcher`, as
//! the injector passes them), Istio's default set plus the pod's patterns, read from the real
//! Envoy's `/stats` after real traffic.

use crate::skeleton_support::*;

use meshd_e2e::*;

/// The stat names of `pod`'s Envoy (`name: value` lines of `/stats`).
fn stat_names(pod: &SidecarPod) -> Vec<String> {
    pod.envoy_stats()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(n, _)| n.to_string()))
        .collect()
}

#[test]
fn a_pods_stats_inclusion_narrows_what_its_envoy_records() {
    let mesh = voicecore_mesh("stats");
    let all = service_pod(&mesh, "call-service");
    let chosen = mesh
        .add_sidecar_pod_with(
            &format!("crm-service-v1.{NS}"),
            ip(14),
            8004,
            SidecarOptions {
                bootstrap_args: vec![
                    "--stats-matcher".into(),
                    r#"{"inclusionPrefixes":["cluster.outbound"],"inclusionSuffixes":["downstream_rq_completed"]}"#
                        .into(),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    let _billing = service_pod(&mesh, "billing-service");
    let target = url("billing-service", "/");
    for p in [&all, &chosen] {
        assert_eq!(status_of(p, &target), 200);
    }
    let billing = "cluster.outbound|8007||billing-service.voicecore-ai.svc.cluster.local.";
    let has = |names: &[String], f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n));

    let everything = stat_names(&all);
    assert!(
        has(&everything, &|n| n.starts_with(billing)),
        "no outbound cluster stats"
    );
    assert!(
        has(&everything, &|n| n
            .starts_with("http.outbound_0.0.0.0_8007.")),
        "without a matcher the connection manager's stats are there too"
    );

    let narrowed = stat_names(&chosen);
    // The pod's prefix and suffix, after real traffic.
    assert!(
        has(&narrowed, &|n| n == format!("{billing}upstream_rq_200")),
        "{narrowed:?}"
    );
    assert!(
        has(&narrowed, &|n| n.starts_with("http.")
            && n.ends_with(".downstream_rq_completed")),
        "{narrowed:?}"
    );
    // Istio's default set.
    for prefix in [
        "cluster_manager.",
        "listener_manager.",
        "server.",
        "cluster.xds-grpc.",
    ] {
        assert!(
            has(&narrowed, &|n| n.starts_with(prefix)),
            "no {prefix}*: {narrowed:?}"
        );
    }
    // And nothing else: the connection manager's other stats and the listeners' are gone.
    let other: Vec<&String> = narrowed
        .iter()
        .filter(|n| {
            ![
                "cluster_manager.",
                "listener_manager.",
                "server.",
                "cluster.xds-grpc.",
                "cluster.outbound",
            ]
            .iter()
            .any(|p| n.starts_with(p))
                && !n.ends_with("downstream_rq_completed")
        })
        .collect();
    assert!(other.is_empty(), "stats outside the chosen set: {other:?}");
}
