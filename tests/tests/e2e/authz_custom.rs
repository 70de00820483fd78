//! AuthorizationPolicy `action: CUSTOM` through real Envoy: the server's sidecar asks an HTTP
//! ext_authz provider of `meshd serve --mesh-config` (the workload app with `--ext-authz`:
//! 200 when the check carries `x-ext-authz: allow`, else 403) for the requests a CUSTOM rule
//! matches, and only for those; a CUSTOM policy naming a provider the server lacks fails closed
//! and is reported in `/debug/configz`. On a TCP port a gRPC provider (the workload app with
//! `--ext-authz-grpc`) is asked per connection and closes the ones it refuses.

use crate::authz_support::*;
use meshd_e2e::*;
use std::net::Ipv4Addr;
use std::time::Duration;

const AUTHZ_HOST: &str = "ext-authz.authz.svc.cluster.local";
const AUTHZ_PORT: u16 = 8000;

/// A mesh `name` of `config`, meshd serving with the MeshConfig `mesh_config` (its
/// extensionProviders), the server's name resolving to its VIP; and the MeshConfig's file, for
/// the test to remove at its end.
fn start_mesh(name: &str, config: &str, mesh_config: &str) -> (Mesh, std::path::PathBuf) {
    let mesh_file =
        std::env::temp_dir().join(format!("{name}-{}-mesh-config.yaml", std::process::id()));
    std::fs::write(&mesh_file, mesh_config).unwrap();
    let mesh = Mesh::start(
        MeshOptions::named(name)
            .config("mesh.yaml", config)
            .serve_arg("--mesh-config")
            .serve_arg(mesh_file.to_str().unwrap()),
    )
    .expect("mesh starts");
    mesh.set_hosts(&[(SERVER, server_vip())]).unwrap();
    (mesh, mesh_file)
}

/// The authorizer's pod (host 24) with its sidecar; the test starts the app in it.
fn authorizer_pod(mesh: &Mesh) -> SidecarPod {
    mesh.add_sidecar_pod_with(
        "ext-authz.authz",
        ip(24),
        AUTHZ_PORT,
        SidecarOptions {
            start_app: false,
            ..Default::default()
        },
    )
    .unwrap()
}

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
    let (mesh, mesh_file) = start_mesh(name, &config, &mesh_config());
    let server = mesh.add_sidecar_pod("server.authz", ip(20), MAIN).unwrap();
    let client = mesh
        .add_sidecar_pod("client-a.authz", ip(21), 9090)
        .unwrap();
    let authz = authorizer_pod(&mesh);
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

/// The provider of the TCP test: the workload app's gRPC Authorization service, which allows
/// client-a's principal only.
fn grpc_mesh_config() -> String {
    format!(
        "defaultConfig: {{discoveryAddress: meshd:15012}}\nextensionProviders:\n- name: grpc-authz\n  envoyExtAuthzGrpc:\n    service: {AUTHZ_HOST}\n    port: {AUTHZ_PORT}\n    timeout: 5s\n"
    )
}

#[test]
fn custom_policy_on_a_tcp_port_asks_a_grpc_provider_per_connection() {
    let name = "azcustomtcp";
    let mut config = String::new();
    config.push_str(&service(
        "server",
        NS,
        server_vip(),
        &format!("[{{number: {TCP}, name: tcp, protocol: TCP}}]"),
    ));
    config.push_str(&workload("server", NS, ip(20)));
    for (client, last) in [("client-a", 21), ("client-b", 22)] {
        config.push_str(&service(
            client,
            NS,
            Ipv4Addr::new(10, 96, 0, last),
            "[{number: 9090, name: http, protocol: HTTP}]",
        ));
        config.push_str(&workload(client, NS, ip(last)));
    }
    // The authorizer has a sidecar of its own: its inbound cluster must speak HTTP/2 to the
    // app, or the answer's trailers (grpc-status) are lost and every check fails.
    config.push_str(&service(
        "ext-authz",
        NS,
        Ipv4Addr::new(10, 96, 0, 24),
        &format!("[{{number: {AUTHZ_PORT}, name: grpc, protocol: GRPC}}]"),
    ));
    config.push_str(&workload("ext-authz", NS, ip(24)));
    config.push_str(&peer_authentication("STRICT"));
    let (mesh, mesh_file) = start_mesh(name, &config, &grpc_mesh_config());
    let server = mesh.add_sidecar_pod("server.authz", ip(20), TCP).unwrap();
    let a = mesh
        .add_sidecar_pod("client-a.authz", ip(21), 9090)
        .unwrap();
    let b = mesh
        .add_sidecar_pod("client-b.authz", ip(22), 9090)
        .unwrap();
    let authz = authorizer_pod(&mesh);
    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let port = AUTHZ_PORT.to_string();
    let allowed_principal = format!("spiffe://cluster.local/ns/{NS}/sa/client-a");
    let _authorizer = authz
        .spawn([
            meshd.as_str(),
            "workload",
            "--name",
            "ext-authz",
            "--port",
            &port,
            "--ext-authz-grpc",
            "--ext-authz-allow",
            &allowed_principal,
        ])
        .unwrap();
    let checks = |key: &str| -> u64 {
        let r = authz
            .request(
                "GET",
                &format!("http://127.0.0.1:{AUTHZ_PORT}/__count?key={key}"),
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
    let get = |client: &SidecarPod| {
        let r = client.request("GET", &format!("http://{SERVER}:{TCP}/"), &[], None);
        let got = outcome(&r);
        if closed_unanswered(&got) {
            "closed".to_string()
        } else {
            got
        }
    };
    expect("no policy yet: client-a", "200", || get(&a)).unwrap();
    expect("no policy yet: client-b", "200", || get(&b)).unwrap();
    assert_eq!(checks("check:grpc"), 0, "no CUSTOM policy, no check");

    mesh.write_config(
        "p.yaml",
        &server_policy(
            "ext",
            "action: CUSTOM, provider: {name: grpc-authz}, rules: [{}]",
        ),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the network ext_authz filter",
        || {
            server
                .envoy_admin("/config_dump?resource=dynamic_listeners")
                .is_ok_and(|(s, body)| s == 200 && body.contains("envoy.filters.network.ext_authz"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&mesh.control_plane_log(), 30)));
    expect(
        "client-a: the authorizer allows its principal",
        "200",
        || get(&a),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy_stats(&server)));
    expect("client-b: the authorizer refuses it", "closed", || get(&b))
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy_stats(&server)));
    let a_checks = checks(&format!("check:grpc:{allowed_principal}"));
    let b_checks = checks(&format!(
        "check:grpc:spiffe://cluster.local/ns/{NS}/sa/client-b"
    ));
    assert!(
        a_checks >= 3,
        "client-a's connections were checked: {a_checks}"
    );
    assert!(
        b_checks >= 3,
        "client-b's connections were checked: {b_checks}"
    );

    // A rule matching client-b only: client-a's connections are no longer checked (the marker
    // RBAC filter gates ext_authz), and pass without the authorizer.
    mesh.write_config(
        "p.yaml",
        &server_policy(
            "ext",
            &format!("action: CUSTOM, provider: {{name: grpc-authz}}, rules: [{{from: [{{source: {{principals: [cluster.local/ns/{NS}/sa/client-b]}}}}]}}]"),
        ),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "the narrower CUSTOM rule", || {
        server
            .envoy_admin("/config_dump?resource=dynamic_listeners")
            .is_ok_and(|(s, body)| s == 200 && body.contains("sa/client-b"))
    })
    .unwrap();
    expect("client-b: still refused", "closed", || get(&b)).unwrap();
    let before = checks(&format!("check:grpc:{allowed_principal}"));
    expect("client-a: not matched, passes unchecked", "200", || get(&a)).unwrap();
    assert_eq!(
        checks(&format!("check:grpc:{allowed_principal}")),
        before,
        "no check for a connection no CUSTOM rule matches"
    );
    let _ = std::fs::remove_file(&mesh_file);
}

/// The server sidecar's RBAC and ext_authz counters, for a failure's message.
fn envoy_stats(server: &SidecarPod) -> String {
    server
        .envoy_admin("/stats?filter=rbac|ext_authz|tcp")
        .map(|(_, body)| body)
        .unwrap_or_else(|e| format!("no stats: {e}"))
}
