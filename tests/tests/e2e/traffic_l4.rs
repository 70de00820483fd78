//! VirtualService tcp and tls routes in stock Envoy sidecars: a TCP service split by weight over
//! two services, a TCP service routed by the connection's destination address
//! (`destinationSubnets`), and TLS connections routed by SNI (and by address where a tls
//! route's `destinationSubnets` says so).

use crate::traffic_support;

use std::collections::BTreeSet;
use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const TCP_PORT: u16 = 9000;
const TLS_PORT: u16 = 8443;

/// A mesh-internal TCP service `name` on `port`.
fn tcp_service(name: &str, vip: std::net::Ipv4Addr, port: u16) -> String {
    service(name, vip, port).replace(
        &format!("{{number: {port}, name: http, protocol: HTTP}}"),
        &format!("{{number: {port}, name: tcp, protocol: TCP}}"),
    )
}

/// A mesh `name` of a client (host 10) and two TCP services `db-a` and `db-b` (hosts 30 and
/// 31, each its own backend) beside `config`; the client's and the backends' pods started.
fn client_and_two_databases(name: &str, config: &str) -> (Mesh, SidecarPod) {
    let yaml = [
        service("client", vip(10), 8080),
        workload("client", "client", ip(10), &[]),
        tcp_service("db-a", vip(30), TCP_PORT),
        workload("db-a", "db-a", ip(30), &[]),
        tcp_service("db-b", vip(31), TCP_PORT),
        workload("db-b", "db-b", ip(31), &[]),
        config.to_string(),
    ]
    .concat();
    let mesh = mesh(
        name,
        &yaml,
        &[(fqdn("db-a"), vip(30)), (fqdn("db-b"), vip(31))],
    );
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), 8080)
        .unwrap();
    mesh.add_sidecar_pod(&format!("db-a.{NS}"), ip(30), TCP_PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("db-b.{NS}"), ip(31), TCP_PORT)
        .unwrap();
    (mesh, client)
}

#[test]
fn tcp_routes_split_by_weight() {
    let vs = format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db-a, namespace: {NS}}}
spec:
  hosts: [{a}]
  tcp:
  - match: [{{port: {TCP_PORT}}}]
    route:
    - destination: {{host: {a}}}
      weight: 50
    - destination: {{host: {b}}}
      weight: 50
"#,
        a = fqdn("db-a"),
        b = fqdn("db-b")
    );
    let (_mesh, client) = client_and_two_databases("tcproute", &vs);

    // Each request on a new connection (the split is per connection).
    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let a = get(&client, &format!("http://{}:{TCP_PORT}/", fqdn("db-a")));
        assert_eq!(a.status, 200, "{a:?}");
        seen.insert(a.service());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["db-a".to_string(), "db-b".to_string()])
    );
    // db-b has no route of its own: always db-b, over mTLS.
    for _ in 0..4 {
        let a = get(&client, &format!("http://{}:{TCP_PORT}/", fqdn("db-b")));
        assert_eq!(a.service(), "db-b");
        assert_eq!(
            a.json()["headers"]["x-forwarded-client-cert"],
            serde_json::Value::Null,
            "TCP: no HTTP processing on either side"
        );
    }
    let weighted = stat(
        &client,
        &format!(
            "cluster.outbound|{TCP_PORT}||{}.upstream_cx_total",
            fqdn("db-b")
        ),
    );
    assert!(weighted >= 5, "{weighted}");
}

#[test]
fn tcp_route_by_destination_subnet() {
    let db = tcp_service("db", vip(40), TCP_PORT).replace(
        &format!("addresses: [{}]", vip(40)),
        &format!("addresses: [{}, {}]", vip(40), vip(41)),
    );
    let vs = format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: {NS}}}
spec:
  hosts: [{db}]
  tcp:
  - match: [{{destinationSubnets: ["{first}/32"]}}]
    route: [{{destination: {{host: {a}}}}}]
  - route: [{{destination: {{host: {b}}}}}]
"#,
        db = fqdn("db"),
        first = vip(40),
        a = fqdn("db-a"),
        b = fqdn("db-b")
    );
    let (_mesh, client) = client_and_two_databases("tcpsubnet", &(db + &vs));
    for _ in 0..4 {
        let first = get(&client, &format!("http://{}:{TCP_PORT}/", vip(40)));
        assert_eq!(first.status, 200, "{first:?}");
        assert_eq!(first.service(), "db-a", "the subnet route's destination");
        let second = get(&client, &format!("http://{}:{TCP_PORT}/", vip(41)));
        assert_eq!(second.status, 200, "{second:?}");
        assert_eq!(
            second.service(),
            "db-b",
            "the other address: the next route"
        );
    }
}

#[test]
fn tls_routes_by_sni() {
    let certs = tempfile::tempdir().unwrap();
    tls_certificates(
        certs.path(),
        &["a.secure.example", "b.secure.example", "c.secure.example"],
    );
    let entry = |name: &str, host: &str, addr: std::net::Ipv4Addr| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {NS}}}
spec:
  hosts: [{host}]
  ports: [{{number: {TLS_PORT}, name: tls, protocol: TLS}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {addr}}}]
---
"#
        )
    };
    // `elsewhere`: an address no service has; SNI a.secure.example sent there stays A's by its
    // subnet route, ahead of the route sending that name to B.
    let (a_ip, b_ip, elsewhere) = (ip(60), ip(61), ip(62));
    let yaml = [
        service("client", vip(10), 8080),
        workload("client", "client", ip(10), &[]),
        entry("partner-a", "a.secure.example", a_ip),
        entry("partner-b", "b.secure.example", b_ip),
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: a-to-b, namespace: {NS}}}
spec:
  hosts: [a.secure.example]
  tls:
  - match: [{{sniHosts: [a.secure.example], destinationSubnets: ["{elsewhere}/32"]}}]
    route: [{{destination: {{host: a.secure.example, port: {{number: {TLS_PORT}}}}}}}]
  - match: [{{sniHosts: [a.secure.example], port: {TLS_PORT}}}]
    route: [{{destination: {{host: b.secure.example, port: {{number: {TLS_PORT}}}}}}}]
"#
        ),
    ]
    .concat();
    let mesh = mesh("tlsroute", &yaml, &[]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), 8080)
        .unwrap();
    // Two TLS servers outside the mesh, each serving a file naming itself.
    let mut servers = Vec::new();
    for (name, addr) in [("A", a_ip), ("B", b_ip)] {
        let pod = mesh.add_plain_pod(&format!("tls-{name}"), addr).unwrap();
        let root = certs.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("id.txt"), name).unwrap();
        let cert = certs.path().join("cert.pem").to_string_lossy().into_owned();
        let key = certs.path().join("key.pem").to_string_lossy().into_owned();
        let mut cmd = pod.exec([
            "openssl", "s_server", "-quiet", "-accept", "8443", "-cert", &cert, "-key", &key,
            "-WWW",
        ]);
        cmd.current_dir(&root);
        servers.push(Child::spawn(&format!("tls-{name}"), cmd, None).unwrap());
    }
    let ca = certs.path().join("ca.pem").to_string_lossy().into_owned();
    let fetch = |host: &str, addr: std::net::Ipv4Addr| -> String {
        let resolve = format!("{host}:{TLS_PORT}:{addr}");
        let url = format!("https://{host}:{TLS_PORT}/id.txt");
        client
            .run([
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                &url,
            ])
            .unwrap_or_else(|e| format!("error: {e:#}"))
    };
    assert!(
        wait_until(Duration::from_secs(10), || fetch("b.secure.example", b_ip)
            == "B"),
        "{}",
        fetch("b.secure.example", b_ip)
    );
    // SNI a.secure.example to A's address: the tls route sends it to B.
    assert_eq!(fetch("a.secure.example", a_ip), "B");
    // An SNI no service claims goes where it was addressed (ALLOW_ANY passthrough).
    assert_eq!(fetch("c.secure.example", a_ip), "A");
    // destinationSubnets: SNI a.secure.example to `elsewhere` takes the first route, to A; and
    // B's name sent there still finds B's chain, under that subnet too.
    assert_eq!(fetch("a.secure.example", elsewhere), "A");
    assert_eq!(fetch("b.secure.example", elsewhere), "B");
    let listeners = client.envoy_config_dump().unwrap();
    let l = dump_section(&listeners, "ListenersConfigDump").to_string();
    assert!(l.contains("a.secure.example"), "SNI chains in the dump");
}

#[test]
fn egress_tls_origination_simple_and_mutual() {
    let certs = tempfile::tempdir().unwrap();
    tls_certificates(
        certs.path(),
        &["bank.secure.example", "vault.secure.example"],
    );
    let file = |f: &str| certs.path().join(f).to_string_lossy().into_owned();
    let (bank_ip, vault_ip) = (ip(62), ip(63));
    let entry = |name: &str, addr: std::net::Ipv4Addr, tls: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {NS}}}
spec:
  hosts: [{name}.secure.example]
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: {TLS_PORT}}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {addr}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {NS}}}
spec:
  host: {name}.secure.example
  trafficPolicy:
    tls: {tls}
---
"#
        )
    };
    let yaml = [
        service("client", vip(10), 8080),
        workload("client", "client", ip(10), &[]),
        entry(
            "bank",
            bank_ip,
            &format!(
                "{{mode: SIMPLE, caCertificates: {}, sni: bank.secure.example}}",
                file("ca.pem")
            ),
        ),
        entry(
            "vault",
            vault_ip,
            &format!(
                "{{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}, sni: vault.secure.example}}",
                file("cert.pem"),
                file("key.pem"),
                file("ca.pem")
            ),
        ),
    ]
    .concat();
    let mesh = mesh(
        "tlsorigin",
        &yaml,
        &[
            ("bank.secure.example".to_string(), bank_ip),
            ("vault.secure.example".to_string(), vault_ip),
        ],
    );
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), 8080)
        .unwrap();
    // TLS servers outside the mesh; vault demands a client certificate from our CA.
    let mut servers = Vec::new();
    for (name, addr, mutual) in [("bank", bank_ip, false), ("vault", vault_ip, true)] {
        let pod = mesh.add_plain_pod(name, addr).unwrap();
        let root = certs.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("id.txt"), name).unwrap();
        let (cert, key, ca) = (file("cert.pem"), file("key.pem"), file("ca.pem"));
        let mut argv = vec![
            "openssl", "s_server", "-quiet", "-accept", "8443", "-cert", &cert, "-key", &key,
            "-WWW",
        ];
        if mutual {
            argv.extend(["-Verify", "1", "-verify_return_error", "-CAfile", &ca]);
        }
        let mut cmd = pod.exec(argv);
        cmd.current_dir(&root);
        servers.push(Child::spawn(&format!("tls-{name}"), cmd, None).unwrap());
    }
    // The app speaks plain HTTP; the sidecar originates TLS (and presents the client cert).
    for name in ["bank", "vault"] {
        let url = format!("http://{name}.secure.example:8080/id.txt");
        assert!(
            wait_until(Duration::from_secs(10), || get(&client, &url).body == name),
            "{name}: {:?}",
            get(&client, &url)
        );
    }
    // Without the client certificate vault refuses: prove it by asking directly with curl. The
    // refusal is vault's TLS alert, read by curl in the handshake (35) or, under TLS 1.3, on
    // the first read after it (56); not a timeout or a connection failure.
    let ca = file("ca.pem");
    let resolve = format!("vault.secure.example:8443:{vault_ip}");
    let outside = mesh.add_plain_pod("outside", ip(100)).unwrap();
    let out = curl_in(
        &outside,
        &[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "https://vault.secure.example:8443/id.txt",
        ],
    );
    assert!(
        matches!(
            out.exit,
            Some(curl_exit::SSL_CONNECT_ERROR | curl_exit::RECV_ERROR)
        ) && out.stderr.contains("alert"),
        "{out:?}"
    );
}
