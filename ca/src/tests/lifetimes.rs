//! Certificate lifetimes: when a certificate is due for rotation, short TTLs, concurrent issuance.

use super::*;

#[test]
fn rotation_due_rules() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let mut c = ca.issue_workload(&id("a", "b")).unwrap();
    let nb = c.not_before;
    let na = c.not_after;
    assert!(!ca.rotation_due(c.validity(), SystemTime::now()));
    assert!(!ca.rotation_due(c.validity(), na - DAY - Duration::from_secs(1)));
    assert!(ca.rotation_due(c.validity(), na - DAY + Duration::from_secs(1)));
    assert!(ca.rotation_due(c.validity(), na + Duration::from_secs(1)));
    // short-lived: half the lifetime wins over the 24h window; the lifetime counts from
    // issuance (NotBefore + the 2 min back-dating), not from NotBefore
    let issued = nb + BACKDATE;
    c.not_after = issued + Duration::from_secs(3600);
    assert_eq!(
        ca.rotation_window_for(c.validity()),
        Duration::from_secs(1800)
    );
    assert!(!ca.rotation_due(c.validity(), issued + Duration::from_secs(29 * 60)));
    assert!(ca.rotation_due(c.validity(), issued + Duration::from_secs(31 * 60)));
}

#[test]
fn short_ttl_is_honoured_and_not_due_at_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&CaConfig {
        workload_cert_ttl: Duration::from_secs(30),
        rotation_window: Duration::from_secs(10),
        ..cfg(dir.path())
    })
    .unwrap();
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    let now = SystemTime::now();
    let left = c.not_after.duration_since(now).unwrap();
    assert!(
        left <= Duration::from_secs(30) && left >= Duration::from_secs(28),
        "{left:?}"
    );
    assert_eq!(
        ca.rotation_window_for(c.validity()),
        Duration::from_secs(10)
    );
    assert!(!ca.rotation_due(c.validity(), now));
    assert!(!ca.rotation_due(c.validity(), c.not_after - Duration::from_secs(11)));
    assert!(ca.rotation_due(c.validity(), c.not_after - Duration::from_secs(9)));
    // the same 30 s certificate with the default 24 h window: half its life, 15 s
    let ca = CertificateAuthority::load_or_create(&CaConfig {
        workload_cert_ttl: Duration::from_secs(30),
        ..cfg(dir.path())
    })
    .unwrap();
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    assert_eq!(
        ca.rotation_window_for(c.validity()),
        Duration::from_secs(15)
    );
    assert!(!ca.rotation_due(c.validity(), SystemTime::now()));
}

#[test]
fn concurrent_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let ca = std::sync::Arc::new(CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let ca = ca.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    ca.issue_workload(&id(&format!("ns{t}"), &format!("sa{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(ca.issued().len(), 41);
}
