//! The demo's plan of the embedded VoiceCore mesh and its sync-status line.

use super::*;

#[test]
fn plan_of_the_embedded_mesh() {
    let mesh = embedded_mesh();
    let plan = DemoPlan::from_mesh(&mesh).unwrap();
    assert_eq!(plan.services.len(), 8, "{plan:?}");
    for (i, s) in plan.services.iter().enumerate() {
        assert_eq!(s.address, Ipv4Addr::new(10, 44, 0, 10 + i as u8), "{s:?}");
        assert_eq!(s.port, 8000 + i as u16, "{s:?}");
        assert_eq!(s.workload, format!("{}-v1.voicecore-ai", s.service));
        assert_eq!(
            s.host,
            format!("{}.voicecore-ai.svc.cluster.local", s.service)
        );
    }
    assert!(plan.services.iter().any(|s| s.service == "billing-service"));
    assert_eq!(
        plan.gateways,
        vec![GatewayPod {
            workload: "ingressgateway.istio-system".into(),
            address: Ipv4Addr::new(10, 44, 0, 2),
            port: 8080,
        }]
    );
    assert_eq!(plan.proxies(), 9);
    assert_eq!(plan.hosts.len(), 24);
    for name in [
        "billing-service.voicecore-ai.svc.cluster.local",
        "billing-service.voicecore-ai",
        "billing-service",
    ] {
        assert!(
            plan.hosts
                .iter()
                .any(|(n, ip)| n == name && ip.octets()[..3] == [10, 96, 0]),
            "{name}: {:?}",
            plan.hosts
        );
    }
    assert_eq!(plan.routes.len(), 8);
    for s in &plan.services {
        assert!(
            plan.routes
                .iter()
                .any(|r| r.prefix == format!("/{}/", s.service) && r.host == s.host),
            "{s:?}: {:?}",
            plan.routes
        );
    }
}

#[test]
fn sync_summary_counts_fully_synced_proxies() {
    let v = serde_json::json!([
        {"proxy_id": "a", "types": {"c": {"status": "SYNCED"}, "l": {"status": "SYNCED"}}},
        {"proxy_id": "b", "types": {"c": {"status": "SYNCED"}, "l": {"status": "STALE"}}},
        {"proxy_id": "c", "types": {"c": {"status": "NACKED"}}},
        {"proxy_id": "d", "types": {}},
    ]);
    let s = SyncSummary::from_syncz(&v);
    assert_eq!(
        s,
        SyncSummary {
            connected: 4,
            synced: 1,
            nacked: 1
        }
    );
    assert_eq!(s.line(9), "4/9 proxies connected, 1 synced, 1 NACKED");
}

#[test]
fn the_background_load_makes_the_calls_the_policies_allow() {
    let mesh = embedded_mesh();
    let plan = DemoPlan::from_mesh(&mesh).unwrap();
    let calls = load::calls(&mesh, &plan);
    let has = |from: Option<&str>, host: &str| {
        calls
            .iter()
            .any(|c| c.from.as_deref() == from && c.url.contains(host))
    };
    // gateway may call tenant-service (voicecore-authz.yaml), and tenant-service's pod exists.
    assert!(
        has(
            Some("gateway-v1.voicecore-ai"),
            "tenant-service.voicecore-ai.svc.cluster.local"
        ),
        "{calls:#?}"
    );
    // The ingress gateway's routes, from the node namespace.
    assert!(calls.iter().any(|c| c.from.is_none()), "{calls:#?}");
    // Nothing a policy does not name: billing-service never calls the gateway.
    assert!(
        !has(
            Some("billing-service-v1.voicecore-ai"),
            "gateway.voicecore-ai"
        ),
        "{calls:#?}"
    );
}
