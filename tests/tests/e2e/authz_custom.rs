//! AuthorizationPolicy `action: CUSTOM` through real Envoy: the server's sidecar asks an HTTP
//! ext_authz provider of `meshd serve --mesh-config` (the workload app with `--ext-authz`:
//! 200 when the check carries `x-ext-authz: allow`, else 403) for the requests a CUSTOM rule
//! matches, and only for those; a CUSTOM policy naming a provider the server lacks fails closed
//! and is reported in `/debug/configz`.

use crate::authz_support::*;
use meshd_e2e::*;
use std::net::Ipv4Addr;
use std::time::Duration;

const AUTHZ_HOST: &str = "ext-authz.authz.svc.cluster.local";
const AUTHZ_PORT: u16 = 8000;

fn mesh_config() -> String {
    format!(
        "defaultConfig: {{discoveryAddress: meshd:15012}}\nextensionProviders:\n- name: test-authz\n  envoyExtAuthzHttp:\n    service: {AUTHZ_HOST}\n    port: {AUTHZ_PORT}\n    includeRequestHeadersInCheck: [x-ext-authz]\n"
    )
}

#[test]
fn custom_policy_calls_the_ext_authz_provider_for_what_it_matches() {
    let name = "azcustom";
    let mut config = String::new();
    config.push_str(&service(
        "server",
        NS,
        server_vip(),
        &format!("[{{number: {MAIN}, name: http, protocol: HTTP}}]"),
    ));
    config.push_str(&workload("server", NS, ip(20)));
    config.push_str(&service(
        "client-a",
        NS,
        Ipv4Addr::new(10, 96, 0, 21),
        "[{number: 9090, name: http, protocol: HTTP}]",
    ));
    config.push_str(&workload("client-a", NS, ip(21)));
    config.push_str(&service(
        "ext-authz",
        NS,
        Ipv4Addr::new(10, 96, 0, 24),
        &format!("[{{number: {AUTHZ_PORT}, name: http, protocol: HTTP}}]"),
    ));
    config.push_str(&workload("ext-authz", NS, ip(24)));
    config.push_str(&peer_authentication("STRICT"));
    let mesh_file =
        std::env::temp_dir().join(format!("{name}-{}-mesh-config.yaml", std::process::id()));
    std::fs::write(&mesh_file, mesh_config()).unwrap();
    let mesh = Mesh::start(
        MeshOptions::named(name)
            .config("mesh.yaml", &config)
            .serve_arg("--mesh-config")
            .serve_arg(mesh_file.to_str().unwrap()),
    )
    .expect("mesh starts");
    mesh.set_hosts(&[(SERVER, server_vip())]).unwrap();
    let server = mesh.add_sidecar_pod("server.authz", ip(20), MAIN).unwrap();
    let client = mesh
        .add_sidecar_pod("client-a.authz", ip(21), 9090)
        .unwrap();
    let authz = mesh
        .add_sidecar_pod_with(
            "ext-authz.authz",
            ip(24),
            AUTHZ_PORT,
            SidecarOptions {
                start_app: false,
                ..Default::default()
            },
        )
        .unwrap();
    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let port = AUTHZ_PORT.to_string();
    let _authorizer = authz
        .spawn([
            meshd.as_str(),
            "workload",
            "--name",
            "ext-authz",
            "--port",
            &port,
            "--ext-authz",
        ])
        .unwrap();
    let checks = |path: &str| -> u64 {
        let r = authz
            .request(
                "GET",
                &format!("http://127.0.0.1:{AUTHZ_PORT}/__count?key=check:{path}"),
                &[],
                None,
            )
            .expect("authorizer answers");
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("count JSON");
        v["count"].as_u64().unwrap_or(0)
    };
    wait_for(Duration::from_secs(10), "the authorizer listens", || {
        authz
            .request(
                "GET",
                &format!("http://127.0.0.1:{AUTHZ_PORT}/__count"),
                &[],
                None,
            )
            .is_ok()
    })
    .unwrap();

    let policy = server_policy(
        "ext",
        "action: CUSTOM, provider: {name: test-authz}, rules: [{to: [{operation: {paths: ['/custom/*']}}]}]",
    );
    mesh.write_config("p.yaml", &policy).unwrap();
    wait_for(Duration::from_secs(20), "the ext_authz filter", || {
        server
            .envoy_admin("/config_dump?resource=dynamic_listeners")
            .is_ok_and(|(s, body)| s == 200 && body.contains("istio-ext-authz"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&mesh.control_plane_log(), 30)));

    let get = |path: &str, headers: &[(&str, &str)]| {
        let r = client.request(
            "GET",
            &format!("http://{SERVER}:{MAIN}{path}"),
            headers,
            None,
        );
        match r {
            Ok(r) if r.status == 403 => format!("403 {}", r.body.trim()),
            Ok(r) => r.status.to_string(),
            Err(e) => format!("no answer: {e}"),
        }
    };
    expect(
        "/custom/x without the header: the authorizer denies",
        "403 denied by ext-authz",
        || get("/custom/x", &[]),
    )
    .unwrap();
    expect("/custom/x with x-ext-authz: allow", "200", || {
        get("/custom/x", &[("x-ext-authz", "allow")])
    })
    .unwrap();
    expect("/open: no CUSTOM rule matches", "200", || get("/open", &[])).unwrap();
    assert!(checks("/custom/x") >= 6, "each /custom request was checked");
    assert_eq!(checks("/open"), 0, "the authorizer is not called for /open");

    // A provider the server lacks: the policy fails closed and /debug/configz says why.
    let unknown = server_policy(
        "ext",
        "action: CUSTOM, provider: {name: nope}, rules: [{to: [{operation: {paths: ['/custom/*']}}]}]",
    );
    mesh.write_config("p.yaml", &unknown).unwrap();
    expect(
        "unknown provider: /open fails closed",
        "403 RBAC: access denied",
        || get("/open", &[]),
    )
    .unwrap();
    let (status, configz) = mesh.admin_get("/debug/configz").unwrap();
    assert_eq!(status, 200);
    assert!(
        configz
            .contains("`nope` is not an envoyExtAuthzHttp or envoyExtAuthzGrpc extension provider"),
        "{configz}"
    );
    let _ = std::fs::remove_file(&mesh_file);
}
