//! The fleet's pure parts: the sync criterion and the DestinationRule edit.

use super::*;

#[test]
fn bumps_only_the_first_destination_rule() {
    let text = "a\n  tcp: {maxConnections: 100}\nb\n  tcp: {maxConnections: 100}\n";
    let (out, value) = bump_first_max_connections(text).unwrap();
    assert_eq!(value, 1100);
    assert_eq!(
        out,
        "a\n  tcp: {maxConnections: 1100}\nb\n  tcp: {maxConnections: 100}\n"
    );
    assert!(bump_first_max_connections("nothing here").is_none());
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
