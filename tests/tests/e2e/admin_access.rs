//! The admin API split by trust (issue 14, finding 3), through real sockets: `meshd serve` in
//! the node namespace, callers in a pod namespace whose connections really come from a
//! non-loopback address (10.44.0.x over the bridge).

use meshd_e2e::*;

fn refused(r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 401, "{what}: {} {}", r.status, r.body);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{what}: {:?}",
        r.headers
    );
    assert!(r.body.contains("administrators"), "{what}: {}", r.body);
}

#[test]
fn off_host_callers_get_metrics_but_no_debug_views_or_actions() {
    let mesh = Mesh::start(MeshOptions::named("adminacc")).unwrap();
    let outsider = mesh.add_plain_pod("outsider", ip(9)).unwrap();
    let off_host = mesh.admin_url_off_host();

    // Open to anyone who reaches the port.
    for path in ["/metrics", "/healthz/ready", "/version"] {
        let (status, body) = outsider.get(&format!("{off_host}{path}")).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, metrics) = outsider.get(&format!("{off_host}/metrics")).unwrap();
    assert!(metrics.contains("meshd_xds_connected_proxies"), "{metrics}");

    // Debug views and the root rotation: refused without a credential.
    for path in [
        "/debug/syncz",
        "/debug/certs",
        "/debug/registryz",
        "/debug/configz",
        "/debug/ca/rotate-root",
    ] {
        let r = outsider
            .request("GET", &format!("{off_host}{path}"), &[], None)
            .unwrap();
        refused(&r, path);
    }
    let r = outsider
        .request(
            "POST",
            &format!("{off_host}/debug/ca/rotate-root?pause_after=add-root"),
            &[],
            None,
        )
        .unwrap();
    refused(&r, "POST /debug/ca/rotate-root");
    // A token means nothing in file mode (nothing can check it).
    let r = outsider
        .request(
            "POST",
            &format!("{off_host}/debug/ca/rotate-root"),
            &[("authorization", "Bearer anything")],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);

    // The rotation did not start: on loopback the status is idle and nothing ever ran.
    let status = mesh.admin_json("/debug/ca/rotate-root").unwrap();
    assert_eq!(status["state"], "idle", "{status}");
    assert!(status["last_rotation"].is_null(), "{status}");
    assert!(status["rotation"].is_null(), "{status}");

    // The CLI off-host says why; on the node's loopback it works.
    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let e = outsider
        .run([meshd.as_str(), "proxy-status", "--admin", &off_host])
        .unwrap_err();
    assert!(format!("{e:#}").contains("401"), "{e:#}");
    let out = mesh
        .node()
        .run([meshd.as_str(), "proxy-status", "--admin", &mesh.admin_url()])
        .unwrap();
    assert!(out.starts_with("NAME"), "{out}");
}
