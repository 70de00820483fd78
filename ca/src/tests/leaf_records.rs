//! The record of issued leaves behind /debug/certs and /metrics: listed without keys, bounded, summarised.

use super::*;

#[test]
fn issued_registry_lists_valid_certs_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    ca.issue_workload(&id("a", "b")).unwrap();
    ca.issue_workload(&id("c", "d")).unwrap();
    ca.server_cert(&["localhost".into()]).unwrap();
    let list = ca.issued();
    assert_eq!(list.len(), 4);
    assert_eq!(list[0].kind, "root");
    assert_eq!(list[0].spiffe_id, "spiffe://cluster.local");
    assert!(
        list.iter()
            .any(|i| i.spiffe_id == "spiffe://cluster.local/ns/c/sa/d")
    );
    assert_eq!(list.iter().filter(|i| i.kind == "server").count(), 1);
    for i in &list {
        ::time::OffsetDateTime::parse(
            &i.not_before,
            &::time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        ::time::OffsetDateTime::parse(
            &i.not_after,
            &::time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    }
    let json = serde_json::to_string(&list).unwrap();
    assert!(!json.contains("PRIVATE"));
    // expired entries are pruned
    {
        let mut reg = ca.registry.lock().unwrap();
        for (_, e) in reg.certs.iter_mut() {
            e.not_after = SystemTime::now() - Duration::from_secs(1);
        }
    }
    assert_eq!(ca.issued().len(), 1);
    assert!(ca.registry.lock().unwrap().certs.is_empty());
}

#[test]
fn leaf_records_are_bounded_and_summarised_without_per_certificate_series() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    ca.set_tracking_cap(8);
    let id = SpiffeId::new("cluster.local", "n", "s");
    let mut last = None;
    for _ in 0..20 {
        last = Some(ca.issue_workload(&id).unwrap());
    }
    let leaves: Vec<CertInfo> = ca
        .issued()
        .into_iter()
        .filter(|c| c.kind == "workload")
        .collect();
    assert_eq!(leaves.len(), 8, "at most the cap");
    assert!(
        leaves
            .iter()
            .any(|c| c.serial == last.as_ref().unwrap().serial_hex),
        "the newest records are kept"
    );
    let summary = ca.issued_summary();
    assert_eq!(summary.untracked, 12);
    let kind = |k: &str| summary.kinds.iter().find(|s| s.kind == k).unwrap().clone();
    assert_eq!(kind("workload").count, 8);
    assert_eq!(kind("root").count, 1);
    assert_eq!(kind("server").count, 0);
    assert!(kind("workload").earliest_expiry.unwrap() <= last.unwrap().not_after);
}
