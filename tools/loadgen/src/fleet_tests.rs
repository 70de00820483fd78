//! What the fleet reads and the sync criterion over it, on answers shaped as Envoy's and meshd's.

use super::*;

#[test]
fn bumps_only_the_first_destination_rules() {
    let text = "a\n  tcp: {maxConnections: 100}\nb\n  tcp: {maxConnections: 100}\nc: {maxConnections: 7}\n";
    let (out, values) = bump_max_connections(text, 1).unwrap();
    assert_eq!(values, [1100]);
    assert_eq!(
        out,
        "a\n  tcp: {maxConnections: 1100}\nb\n  tcp: {maxConnections: 100}\nc: {maxConnections: 7}\n"
    );
    let (out, values) = bump_max_connections(text, 2).unwrap();
    assert_eq!(values, [1100, 1100]);
    assert_eq!(
        out,
        "a\n  tcp: {maxConnections: 1100}\nb\n  tcp: {maxConnections: 1100}\nc: {maxConnections: 7}\n"
    );
    assert!(
        bump_max_connections(text, 4).is_none(),
        "only three to change"
    );
    assert!(bump_max_connections("nothing here", 1).is_none());
}

#[test]
fn synced_needs_every_part() {
    let m = MeshdView {
        cds_sent: "c1".into(),
        lds_sent: "l1".into(),
        not_synced: vec![],
    };
    let v = EnvoyView {
        unreachable: None,
        connected: true,
        cds: "c1".into(),
        lds: "l1".into(),
        warming_clusters: 0,
        warming_listeners: 0,
    };
    assert!(v.synced_with(Some(&m)));
    assert!(!v.synced_with(None), "no stream to this meshd");
    assert!(
        !EnvoyView {
            connected: false,
            ..v.clone()
        }
        .synced_with(Some(&m))
    );
    assert!(
        !EnvoyView {
            cds: "c0".into(),
            ..v.clone()
        }
        .synced_with(Some(&m))
    );
    assert!(
        !EnvoyView {
            lds: "l0".into(),
            ..v.clone()
        }
        .synced_with(Some(&m))
    );
    assert!(
        !EnvoyView {
            warming_clusters: 1,
            ..v.clone()
        }
        .synced_with(Some(&m))
    );
    assert!(
        !EnvoyView {
            warming_listeners: 1,
            ..v.clone()
        }
        .synced_with(Some(&m))
    );
    let nacked = MeshdView {
        not_synced: vec!["Secret NACKED".into()],
        ..m
    };
    assert!(!v.synced_with(Some(&nacked)));
}

/// The shapes below are what Envoy 1.40 and meshd answered in a run of the fleet.
#[test]
fn reads_envoy_stats_and_meshd_syncz() {
    let stats = serde_json::json!({"stats": [
        {"name": "cluster_manager.cds.version_text", "value": "e516f4fbc9265a16"},
        {"name": "listener_manager.lds.version_text", "value": "c976d406d9602cd2"},
        {"name": "cluster_manager.warming_clusters", "value": 0},
        {"name": "control_plane.connected_state", "value": 1},
        {"name": "listener_manager.total_listeners_warming", "value": 2},
    ]});
    let v = EnvoyView::from_stats(&stats);
    assert!(v.connected);
    assert_eq!(
        (v.cds.as_str(), v.lds.as_str()),
        ("e516f4fbc9265a16", "c976d406d9602cd2")
    );
    assert_eq!((v.warming_clusters, v.warming_listeners), (0, 2));
    assert!(!EnvoyView::from_stats(&serde_json::json!({"stats": []})).connected);

    let node = "sidecar~10.100.0.1~svc-0-0.ns-0~ns-0.svc.cluster.local";
    let syncz = serde_json::json!([{"proxy_id": node, "types": {
        "type.googleapis.com/envoy.config.cluster.v3.Cluster":
            {"sent_version": "e516f4fbc9265a16", "status": "SYNCED", "error": null},
        "type.googleapis.com/envoy.config.listener.v3.Listener":
            {"sent_version": "c976d406d9602cd2", "status": "SYNCED", "error": null},
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret":
            {"sent_version": "b2", "status": "NACKED", "error": "bad key"},
    }}]);
    let m = &MeshdView::from_syncz(&syncz)[node];
    assert_eq!(m.cds_sent, "e516f4fbc9265a16");
    assert_eq!(m.lds_sent, "c976d406d9602cd2");
    assert_eq!(m.not_synced, [r#"Secret "NACKED" "bad key""#]);
    assert!(MeshdView::from_syncz(&serde_json::Value::Null).is_empty());
}

#[test]
fn reads_max_connections_from_a_config_dump() {
    let dump = serde_json::json!({"configs": [
        {"cluster": {"name": "outbound|8080|v1|svc-0.ns-0.svc.cluster.local",
            "circuit_breakers": {"thresholds": [{"max_connections": 1100}]}}},
        {"cluster": {"name": "outbound|8080||svc-0.ns-0.svc.cluster.local",
            "circuit_breakers": {"thresholds": [{"max_connections": 100}]}}},
    ]});
    assert_eq!(max_connections_in(&dump), [1100, 100]);
    assert!(max_connections_in(&serde_json::json!({})).is_empty());
}
