//! Gateways (stock Envoy in router mode): an ingress gateway terminating TLS with a certificate
//! from files, routing by path and redirecting HTTP to HTTPS; certificates by SNI, each TLS
//! server with its own route configuration (an EnvoyFilter selects one by portName and gateway);
//! MUTUAL and OPTIONAL_MUTUAL client certificates, a CRL (`caCrl`) refusing a revoked one; an
//! egress gateway carrying a sidecar's traffic to a MESH_EXTERNAL ServiceEntry host; an
//! AUTO_PASSTHROUGH (east-west) gateway passing a sidecar's mesh mTLS through by SNI.

use crate::traffic_support;

use std::path::Path;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

/// `curl` from inside a pod (status, headers+body), trusting `ca` and resolving `host` to `ip`.
fn curl(pod: &Pod, ca: &Path, host: &str, ip: std::net::Ipv4Addr, url: &str) -> (u16, String) {
    let ca = ca.to_string_lossy().into_owned();
    let resolve443 = format!("{host}:8443:{ip}");
    let resolve80 = format!("{host}:{PORT}:{ip}");
    let out = pod
        .run([
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "--resolve",
            &resolve443,
            "--resolve",
            &resolve80,
            "-w",
            "\n%{http_code}",
            url,
        ])
        .unwrap_or_else(|e| panic!("curl {url}: {e:#}"));
    let (text, code) = out.trim_end().rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), text.to_string())
}

/// The ingress gateway's WorkloadEntry (host 2), for a test's mesh.
fn ingress_entry() -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ingressgateway, namespace: istio-system}}\nspec:\n  address: {}\n  labels: {{istio: ingressgateway}}\n  serviceAccount: istio-ingressgateway\n",
        ip(2)
    )
}

/// The ingress gateway's pod (host 2, [`ingress_entry`]).
fn ingress_gateway(mesh: &Mesh) -> SidecarPod {
    mesh.add_sidecar_pod_with(
        "ingressgateway.istio-system",
        ip(2),
        PORT,
        gateway_options(),
    )
    .unwrap()
}

/// A mesh `name` of `api` (host 20) behind the ingress gateway, with `config` (the test's
/// Gateways, routes and other services), every object accepted; `api`'s pod and the gateway's
/// pod started.
fn api_behind_gateway(
    name: &str,
    config: &str,
    hosts: &[(String, std::net::Ipv4Addr)],
) -> (Mesh, SidecarPod) {
    let yaml = [
        service("api", vip(20), PORT),
        workload("api", "api", ip(20), &[]),
        config.to_string(),
        ingress_entry(),
    ]
    .concat();
    let mesh = mesh(name, &yaml, hosts);
    assert_eq!(
        mesh.admin_json("/debug/configz").unwrap()["rejected"],
        serde_json::json!([])
    );
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    let gw = ingress_gateway(&mesh);
    (mesh, gw)
}

#[test]
fn ingress_gateway_tls_path_routing_and_https_redirect() {
    let certs = tempfile::tempdir().unwrap();
    let host = "shop.example.com";
    tls_certificates(certs.path(), &[host]);
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let gw = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [{host}]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {PORT}, name: http, protocol: HTTP}}
    hosts: [{host}]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [{host}]
  gateways: [web]
  http:
  - match: [{{uri: {{prefix: /api/}}}}]
    route: [{{destination: {{host: {api}, port: {{number: {PORT}}}}}}}]
  - route: [{{destination: {{host: {web}, port: {{number: {PORT}}}}}}}]
"#,
        cert = cert.display(),
        key = key.display(),
        api = fqdn("api"),
        web = fqdn("web"),
    );
    let yaml = [
        service("api", vip(20), PORT),
        workload("api", "api", ip(20), &[]),
        service("web", vip(21), PORT),
        workload("web", "web", ip(21), &[]),
        gw,
        ingress_entry(),
    ]
    .concat();
    let mesh = mesh("ingress", &yaml, &[]);
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("web.{NS}"), ip(21), PORT)
        .unwrap();
    let gw = ingress_gateway(&mesh);
    let outside = mesh.add_plain_pod("outside", ip(100)).unwrap();
    let ca = certs.path().join("ca.pem");

    let (code, text) = curl(
        &outside,
        &ca,
        host,
        gw.ip(),
        &format!("https://{host}:8443/api/v1/items"),
    );
    assert_eq!(code, 200, "{text}\n{}", mesh.envoy_log("ingressgateway"));
    assert!(text.contains(r#""service":"api""#), "{text}");
    assert!(text.contains(r#""path":"/api/v1/items""#), "{text}");
    let (code, text) = curl(
        &outside,
        &ca,
        host,
        gw.ip(),
        &format!("https://{host}:8443/index.html"),
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains(r#""service":"web""#), "{text}");

    // Plain HTTP is redirected to HTTPS.
    let (code, text) = curl(
        &outside,
        &ca,
        host,
        gw.ip(),
        &format!("http://{host}:{PORT}/api/x"),
    );
    assert_eq!(code, 301, "{text}");
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location: {text}"));
    assert!(
        location.starts_with(&format!("https://{host}")),
        "{location}"
    );
    assert!(location.ends_with("/api/x"), "{location}");

    // The certificate is the one from the files (curl verified it against our CA); a client
    // that does not trust it fails to verify it (60), not for any other reason.
    let url = format!("https://{host}:8443/");
    let resolve = format!("{host}:8443:{}", gw.ip());
    let untrusted = curl_in(&outside, &["--resolve", &resolve, &url]);
    assert_eq!(
        untrusted.exit,
        Some(curl_exit::PEER_FAILED_VERIFICATION),
        "{untrusted:?}"
    );
}

#[test]
fn egress_gateway_to_a_service_entry_host() {
    let external = "api.partner.example";
    let egress = "istio-egressgateway.istio-system.svc.cluster.local";
    let ext_ip = ip(50);
    let rest = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: {NS}}}
spec:
  hosts: [{external}]
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {ext_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [{egress}]
  addresses: [10.96.0.99]
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{istio: egressgateway}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: egressgateway, namespace: istio-system}}
spec:
  address: {gw_ip}
  labels: {{istio: egressgateway}}
  serviceAccount: istio-egressgateway
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {PORT}, name: http, protocol: HTTP}}
    hosts: [{external}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-via-egress, namespace: {NS}}}
spec:
  hosts: [{external}]
  gateways: [istio-system/istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: {PORT}}}]
    route: [{{destination: {{host: {egress}, port: {{number: {PORT}}}}}}}]
  - match: [{{gateways: [istio-system/istio-egressgateway], port: {PORT}}}]
    route: [{{destination: {{host: {external}, port: {{number: {PORT}}}}}}}]
"#,
        gw_ip = ip(3),
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        rest,
    ]
    .concat();
    let mesh = mesh("egress", &yaml, &[(external.to_string(), ext_ip)]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let gw = mesh
        .add_sidecar_pod_with("egressgateway.istio-system", ip(3), PORT, gateway_options())
        .unwrap();
    // The partner: a plain workload outside the mesh.
    let partner = mesh.add_plain_pod("partner", ext_ip).unwrap();
    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let _app = partner
        .spawn([
            &meshd, "workload", "--name", "partner", "--bind", "0.0.0.0", "--port", "8080",
        ])
        .unwrap();
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        get(&partner, &format!("http://{ext_ip}:{PORT}/")).status == 200
    }));

    let a = get(&client, &format!("http://{external}:{PORT}/quote?x=1"));
    assert_eq!(a.status, 200, "{a:?}\n{}", mesh.envoy_log("egressgateway"));
    assert_eq!(a.service(), "partner");
    assert_eq!(a.json()["path"], "/quote");
    // The hop went client sidecar → egress gateway → partner.
    let via_gw = format!("cluster.outbound|{PORT}||{egress}.upstream_rq_200");
    assert!(
        stat(&client, &via_gw) >= 1,
        "client did not use the egress gateway"
    );
    let out = format!("cluster.outbound|{PORT}||{external}.upstream_rq_200");
    assert!(
        stat(&gw, &out) >= 1,
        "the egress gateway did not call the partner"
    );
    // The client's own cluster for the partner sent nothing (`upstream_rq_total` exists from
    // the cluster's start; a per-code counter would only exist once used).
    let direct = format!("cluster.outbound|{PORT}||{external}.upstream_rq_total");
    assert_eq!(stat(&client, &direct), 0, "client went direct");
}

/// `curl -sS` from `pod` with extra args; Ok(body) or Err(the run: exit code, stderr).
fn curl_with(pod: &Pod, args: &[&str]) -> Result<String, Curl> {
    let out = curl_in(pod, args);
    match out.exit {
        Some(0) => Ok(out.stdout),
        _ => Err(out),
    }
}

#[test]
fn gateway_certificates_by_sni_mutual_tls_and_passthrough() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    tls_certificates(
        one.path(),
        &[
            "shop.example.com",
            "mtls.example.com",
            "pass.example.com",
            "opt.example.com",
        ],
    );
    tls_certificates(two.path(), &["admin.example.com"]);
    let f1 = |f: &str| one.path().join(f).to_string_lossy().into_owned();
    let f2 = |f: &str| two.path().join(f).to_string_lossy().into_owned();
    let backend_ip = ip(60);
    let config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https-shop, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert1}, privateKey: {key1}}}
  - port: {{number: 8443, name: https-admin, protocol: HTTPS}}
    hosts: [admin.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert2}, privateKey: {key2}, minProtocolVersion: TLSV1_3}}
  - port: {{number: 9443, name: https-mtls, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {cert1}, privateKey: {key1}, caCertificates: {ca1}}}
  - port: {{number: 9445, name: https-optional, protocol: HTTPS}}
    hosts: [opt.example.com]
    tls: {{mode: OPTIONAL_MUTUAL, serverCertificate: {cert1}, privateKey: {key1}, caCertificates: {ca1}}}
  - port: {{number: 9444, name: tls-pass, protocol: TLS}}
    hosts: [pass.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [shop.example.com, admin.example.com, mtls.example.com, opt.example.com]
  gateways: [web]
  http:
  - route: [{{destination: {{host: {api}, port: {{number: {PORT}}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-backend, namespace: {NS}}}
spec:
  hosts: [tls-backend.example]
  ports: [{{number: 8443, name: tls, protocol: TLS}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {backend_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pass, namespace: {NS}}}
spec:
  hosts: [pass.example.com]
  gateways: [web]
  tls:
  - match: [{{sniHosts: [pass.example.com], port: 9444}}]
    route: [{{destination: {{host: tls-backend.example, port: {{number: 8443}}}}}}]
"#,
        cert1 = f1("cert.pem"),
        key1 = f1("key.pem"),
        ca1 = f1("ca.pem"),
        cert2 = f2("cert.pem"),
        key2 = f2("key.pem"),
        api = fqdn("api"),
    );
    let (mesh, gw) = api_behind_gateway("gwtls", &config, &[]);
    // The passthrough backend terminates TLS itself (a plain pod outside the mesh).
    let backend = mesh.add_plain_pod("tls-backend", backend_ip).unwrap();
    let root = one.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("id.txt"), "backend").unwrap();
    let (c1, k1) = (f1("cert.pem"), f1("key.pem"));
    let mut cmd = backend.exec([
        "openssl", "s_server", "-quiet", "-accept", "8443", "-cert", &c1, "-key", &k1, "-WWW",
    ]);
    cmd.current_dir(&root);
    let _server = Child::spawn("tls-backend", cmd, None).unwrap();
    let outside = mesh.add_plain_pod("outside", ip(100)).unwrap();
    let g = gw.ip();
    let resolve = |host: &str, port: u16| format!("{host}:{port}:{g}");

    // Port 8443: each host gets its own certificate (each verified against its own CA).
    let (ca1, ca2) = (f1("ca.pem"), f2("ca.pem"));
    for (host, ca) in [("shop.example.com", &ca1), ("admin.example.com", &ca2)] {
        let body = curl_with(
            &outside,
            &[
                "--cacert",
                ca,
                "--resolve",
                &resolve(host, 8443),
                &format!("https://{host}:8443/x"),
            ],
        )
        .unwrap_or_else(|e| panic!("{host}: {e:?}\n{}", mesh.envoy_log("ingressgateway")));
        assert!(body.contains(r#""service":"api""#), "{host}: {body}");
    }
    // admin's server requires TLS 1.3: a TLS 1.2 client fails the handshake (35) on the
    // gateway's protocol_version alert.
    let old_tls = curl_with(
        &outside,
        &[
            "--cacert",
            &ca2,
            "--tls-max",
            "1.2",
            "--resolve",
            &resolve("admin.example.com", 8443),
            "https://admin.example.com:8443/x",
        ],
    )
    .expect_err("TLS 1.2 to a TLS 1.3-only server");
    assert!(
        old_tls.exit == Some(curl_exit::SSL_CONNECT_ERROR)
            && old_tls.stderr.contains("protocol version"),
        "{old_tls:?}"
    );

    // Each TLS server has its own route configuration, as in Istio
    // (`https.<port>.<portName>.<gateway>.<namespace>`): an EnvoyFilter selecting admin's by
    // portName and gateway (its virtual host by domainName) adds a response header to admin's
    // answers, not to shop's on the same port of the same Gateway.
    mesh.write_config(
        "admin-header.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: admin-header, namespace: istio-system}}
spec:
  workloadSelector: {{labels: {{istio: ingressgateway}}}}
  configPatches:
  - applyTo: VIRTUAL_HOST
    match:
      context: GATEWAY
      routeConfiguration:
        portNumber: 8443
        portName: https-admin
        gateway: {NS}/web
        vhost: {{domainName: admin.example.com}}
    patch:
      operation: MERGE
      value:
        response_headers_to_add: [{{header: {{key: x-served-by, value: admin-server}}}}]
"#
        ),
    )
    .unwrap();
    let answer = |host: &str, ca: &str| {
        curl_with(
            &outside,
            &[
                "-i",
                "--cacert",
                ca,
                "--resolve",
                &resolve(host, 8443),
                &format!("https://{host}:8443/x"),
            ],
        )
        .map(|text| text.to_ascii_lowercase())
    };
    let mut last = String::new();
    let patched = wait_until(std::time::Duration::from_secs(15), || {
        match answer("admin.example.com", &ca2) {
            Ok(text) => {
                last = text;
                last.contains("x-served-by: admin-server")
            }
            Err(e) => {
                last = format!("{e:?}");
                false
            }
        }
    });
    assert!(patched, "{last}\n{}", mesh.envoy_log("ingressgateway"));
    let shop = answer("shop.example.com", &ca1).unwrap();
    assert!(shop.contains(r#""service":"api""#), "{shop}");
    assert!(!shop.contains("x-served-by"), "{shop}");
    // Envoy's own config: the header is in admin's table only.
    let dump = gw.envoy_config_dump().unwrap();
    let routes = dump_section(&dump, "RoutesConfigDump");
    let table = |name: &str| {
        routes["dynamic_route_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| &r["route_config"])
            .find(|rc| rc["name"] == name)
            .unwrap_or_else(|| panic!("no route configuration {name} in {routes}"))
            .to_string()
    };
    let admin_table = table(&format!("https.8443.https-admin.web.{NS}"));
    assert!(admin_table.contains("x-served-by"), "{admin_table}");
    let shop_table = table(&format!("https.8443.https-shop.web.{NS}"));
    assert!(!shop_table.contains("x-served-by"), "{shop_table}");

    // Port 9443, MUTUAL: no client certificate, no entry; one from the CA gets through. The
    // gateway refuses for the missing certificate (its counter says so); under TLS 1.3 curl has
    // finished its side of the handshake by then and learns of it when it next writes or reads
    // (HTTP/2 send 16, send 55, receive 56) or, earlier, in the handshake (35): a failure after
    // connecting, never a timeout or a refused connection.
    let mtls = resolve("mtls.example.com", 9443);
    let url = "https://mtls.example.com:9443/m";
    let no_cert_refusals = "listener.0.0.0.0_9443.ssl.fail_verify_no_cert";
    let refused_before = stat(&gw, no_cert_refusals);
    let no_cert = curl_with(&outside, &["--cacert", &ca1, "--resolve", &mtls, url])
        .expect_err("MUTUAL without a client certificate");
    assert!(
        matches!(
            no_cert.exit,
            Some(
                curl_exit::HTTP2
                    | curl_exit::SSL_CONNECT_ERROR
                    | curl_exit::SEND_ERROR
                    | curl_exit::RECV_ERROR
            )
        ),
        "{no_cert:?}"
    );
    assert_eq!(
        stat(&gw, no_cert_refusals) - refused_before,
        1,
        "{no_cert:?}"
    );
    let body = curl_with(
        &outside,
        &[
            "--cacert",
            &ca1,
            "--cert",
            &c1,
            "--key",
            &k1,
            "--resolve",
            &mtls,
            url,
        ],
    )
    .unwrap();
    assert!(body.contains(r#""service":"api""#), "{body}");

    // Port 9445, OPTIONAL_MUTUAL: without a client certificate and with one from the CA, in;
    // with one from another CA, refused in the handshake (curl's exit as for MUTUAL above), and
    // the gateway counts it as a failed verification.
    let optional = resolve("opt.example.com", 9445);
    let url = "https://opt.example.com:9445/o";
    let (c2, k2) = (f2("cert.pem"), f2("key.pem"));
    let with_cert = |cert: &str, key: &str| {
        let mut args = vec!["--cacert", &ca1, "--resolve", &optional];
        if !cert.is_empty() {
            args.extend(["--cert", cert, "--key", key]);
        }
        args.push(url);
        curl_with(&outside, &args)
    };
    for (what, cert, key) in [("no certificate", "", ""), ("the CA's", &*c1, &*k1)] {
        let body = with_cert(cert, key).unwrap_or_else(|e| {
            panic!(
                "OPTIONAL_MUTUAL, {what}: {e:?}\n{}",
                mesh.envoy_log("ingressgateway")
            )
        });
        assert!(body.contains(r#""service":"api""#), "{what}: {body}");
    }
    let bad_ca_refusals = "listener.0.0.0.0_9445.ssl.fail_verify_error";
    let refused_before = stat(&gw, bad_ca_refusals);
    let other_ca = with_cert(&c2, &k2).expect_err("OPTIONAL_MUTUAL with another CA's certificate");
    assert!(
        matches!(
            other_ca.exit,
            Some(
                curl_exit::HTTP2
                    | curl_exit::SSL_CONNECT_ERROR
                    | curl_exit::SEND_ERROR
                    | curl_exit::RECV_ERROR
            )
        ),
        "{other_ca:?}"
    );
    assert_eq!(
        stat(&gw, bad_ca_refusals) - refused_before,
        1,
        "{other_ca:?}"
    );

    // Port 9444, PASSTHROUGH: the backend's own certificate and content, by SNI.
    let body = curl_with(
        &outside,
        &[
            "--cacert",
            &ca1,
            "--resolve",
            &resolve("pass.example.com", 9444),
            "https://pass.example.com:9444/id.txt",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:?}\n{}", mesh.envoy_log("ingressgateway")));
    assert_eq!(body, "backend");

    // credentialName: a `kind: Secret` among the config files (file mode's Secrets), in the
    // gateway's namespace, served over SDS. The Secret's certificate is the one files serve.
    let indent = |f: &str| {
        std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    mesh.write_config(
        "credential.yaml",
        &format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: shop-cert, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{crt}  tls.key: |
{key}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: creds, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 7443, name: https-creds, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: creds, namespace: {NS}}}
spec:
  hosts: [shop.example.com]
  gateways: [creds]
  http:
  - route: [{{destination: {{host: {api}, port: {{number: {PORT}}}}}}}]
"#,
            crt = indent(&f1("cert.pem")),
            key = indent(&f1("key.pem")),
            api = fqdn("api"),
        ),
    )
    .unwrap();
    let mut last = String::new();
    let served = wait_until(std::time::Duration::from_secs(15), || {
        match curl_with(
            &outside,
            &[
                "--cacert",
                &ca1,
                "--resolve",
                &resolve("shop.example.com", 7443),
                "https://shop.example.com:7443/creds",
            ],
        ) {
            Ok(body) => {
                last = body;
                last.contains(r#""service":"api""#)
            }
            Err(e) => {
                last = format!("{e:?}");
                false
            }
        }
    });
    assert!(served, "{last}\n{}", mesh.envoy_log("ingressgateway"));
    let secrets = gw
        .envoy_admin("/config_dump?resource=dynamic_active_secrets")
        .unwrap()
        .1;
    assert!(secrets.contains("kubernetes://shop-cert"), "{secrets}");
    assert!(
        !secrets.contains("BEGIN PRIVATE KEY"),
        "Envoy redacts the key: {secrets}"
    );

    // What a gateway server cannot be is reported.
    mesh.write_config(
        "bad-gateway.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bad, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 7444, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, credentialName: shop-cert, serverCertificate: {cert1}, privateKey: {key1}}}
"#,
            cert1 = f1("cert.pem"),
            key1 = f1("key.pem"),
        ),
    )
    .unwrap();
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        mesh.admin_json("/debug/configz").unwrap()["rejected"]
            .to_string()
            .contains("either credentialName or the certificate files")
    }));
}

/// `caCrl`: a MUTUAL server with a CRL refuses a client certificate the CRL revokes, which the
/// same server without the CRL lets in.
#[test]
fn gateway_mutual_server_refuses_a_client_certificate_its_crl_revokes() {
    let dir = tempfile::tempdir().unwrap();
    tls_certificates(dir.path(), &["mtls.example.com"]);
    revoke(dir.path(), "cert.pem", "ca.crl");
    let f = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: https-crl, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}, caCrl: {crl}}}
  - port: {{number: 9447, name: https-no-crl, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [mtls.example.com]
  gateways: [web]
  http:
  - route: [{{destination: {{host: {api}, port: {{number: {PORT}}}}}}}]
"#,
        cert = f("cert.pem"),
        key = f("key.pem"),
        ca = f("ca.pem"),
        crl = f("ca.crl"),
        api = fqdn("api"),
    );
    let (mesh, gw) = api_behind_gateway("gateway-crl", &gateway, &[]);
    let outside = mesh.add_plain_pod("outside", ip(100)).unwrap();
    let (ca, cert, key) = (f("ca.pem"), f("cert.pem"), f("key.pem"));
    let with_cert = |port: u16| {
        let resolve = format!("mtls.example.com:{port}:{}", ip(2));
        let url = format!("https://mtls.example.com:{port}/m");
        curl_with(
            &outside,
            &[
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "--resolve",
                &resolve,
                &url,
            ],
        )
    };
    let mut last = None;
    let served = wait_until(std::time::Duration::from_secs(30), || {
        match with_cert(9447) {
            Ok(body) => body.contains(r#""service":"api""#),
            Err(e) => {
                last = Some(e);
                false
            }
        }
    });
    assert!(served, "without the CRL the certificate gets in: {last:?}");
    let revoked = "listener.0.0.0.0_9443.ssl.fail_verify_error";
    let before = stat(&gw, revoked);
    let refused = with_cert(9443).expect_err("the CRL revokes the client's certificate");
    assert!(
        matches!(
            refused.exit,
            Some(
                curl_exit::HTTP2
                    | curl_exit::SSL_CONNECT_ERROR
                    | curl_exit::SEND_ERROR
                    | curl_exit::RECV_ERROR
            )
        ),
        "{refused:?}"
    );
    assert_eq!(stat(&gw, revoked) - before, 1, "{refused:?}");
}

/// In `dir`: `out`, a PEM CRL from the CA of [`tls_certificates`] (`ca.pem`, `ca.key`)
/// revoking `cert`, readable by the proxy's uid.
fn revoke(dir: &Path, cert: &str, out: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        dir.join("crl.cnf"),
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    let ca = [
        "-config", "crl.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
    ];
    let mut args = vec!["ca"];
    args.extend(ca);
    args.extend(["-revoke", cert]);
    openssl(dir, &args);
    let mut args = vec!["ca"];
    args.extend(ca);
    args.extend(["-gencrl", "-out", out]);
    openssl(dir, &args);
    std::fs::set_permissions(dir.join(out), std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// AUTO_PASSTHROUGH: a client sidecar reaches `api` through the gateway, as a sidecar of another
/// network would (a ServiceEntry whose endpoint is the gateway, and a DestinationRule giving
/// ISTIO_MUTUAL the SNI and identity of `api`). The gateway routes on the SNI alone and passes
/// the TLS through: `api`'s sidecar sees the client's own identity, not the gateway's.
#[test]
fn auto_passthrough_gateway_passes_mesh_mtls_through_by_sni() {
    const EAST_WEST: u16 = 15443;
    let remote = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {EAST_WEST}, name: tls, protocol: TLS}}
    hosts: ["*.svc.cluster.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-remote, namespace: {NS}}}
spec:
  hosts: [{remote_host}]
  addresses: [{remote_vip}]
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{{address: {gateway}, ports: {{http: {EAST_WEST}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-remote, namespace: {NS}}}
spec:
  host: {remote_host}
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
      sni: outbound_.{PORT}_._.{api}
      subjectAltNames: ["spiffe://cluster.local/ns/{NS}/sa/api"]
"#,
        remote_host = fqdn("api-remote"),
        remote_vip = vip(50),
        gateway = ip(2),
        api = fqdn("api"),
    );
    let config = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        remote,
    ]
    .concat();
    let (mesh, gw) = api_behind_gateway("east-west", &config, &[(fqdn("api-remote"), vip(50))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let url = format!("http://{}:{PORT}/via-gateway", fqdn("api-remote"));
    let mut last = None;
    let through = wait_until(std::time::Duration::from_secs(30), || {
        let a = get(&client, &url);
        let ok = a.status == 200;
        last = Some(a);
        ok
    });
    let answer = last.unwrap();
    assert!(through, "{answer:?}");
    assert_eq!(answer.service(), "api");
    assert_eq!(
        answer.json()["caller"],
        format!("spiffe://cluster.local/ns/{NS}/sa/client"),
        "api's sidecar verified the client itself: the gateway passed the TLS through"
    );
    let sni_cluster = format!("outbound_.{PORT}_._.{}", fqdn("api"));
    assert!(
        stat(&gw, &format!("cluster.{sni_cluster}.upstream_cx_total")) >= 1,
        "the gateway carried it on its SNI-DNAT cluster"
    );
}

/// Gateway `bind`: a server bound to 127.0.0.1 is reachable from inside the gateway's own pod
/// only (Istio's use: gateway-internal servers), while a server without `bind` on the same
/// gateway serves every client.
#[test]
fn gateway_server_bound_to_loopback_serves_only_its_own_pod() {
    const LOCAL: u16 = 9080;
    let gw = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {PORT}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {LOCAL}, name: http-local, protocol: HTTP}}
    hosts: ["*"]
    bind: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: ["*"]
  gateways: [web]
  http:
  - route: [{{destination: {{host: {api}, port: {{number: {PORT}}}}}}}]
"#,
        api = fqdn("api"),
    );
    let (mesh, gw) = api_behind_gateway("gateway-bind", &gw, &[]);
    let outside = mesh.add_plain_pod("outside", ip(100)).unwrap();
    let wait = std::time::Duration::from_secs(30);
    let everyone = format!("http://{}:{PORT}/hello", ip(2));
    assert!(
        wait_until(wait, || get(&outside, &everyone).status == 200),
        "the unbound server answers every client"
    );
    assert_eq!(get(&outside, &everyone).service(), "api");
    let local = format!("http://127.0.0.1:{LOCAL}/hello");
    assert!(
        wait_until(wait, || get(&gw, &local).status == 200),
        "the bound server answers inside the gateway's pod"
    );
    assert_eq!(get(&gw, &local).service(), "api");
    let from_outside = get(&outside, &format!("http://{}:{LOCAL}/hello", ip(2)));
    assert_eq!(
        from_outside.no_answer,
        Some(NoAnswer::Refused),
        "no listener on the pod's address: {from_outside:?}"
    );
    let dump = gw.envoy_config_dump().unwrap();
    let listeners = dump_active_listeners(&dump);
    assert!(
        listeners.contains(&format!("127.0.0.1_{LOCAL}")),
        "{listeners:?}"
    );
    assert!(
        !listeners.contains(&format!("0.0.0.0_{LOCAL}")),
        "{listeners:?}"
    );
}

/// A TLS server that terminates TLS (SIMPLE): the gateway decrypts by SNI with its own
/// certificate and sends the stream where the `tcp` route says; an HTTPS client outside the
/// mesh gets api's answer through it.
#[test]
fn gateway_tls_server_terminates_and_routes_the_stream_by_its_tcp_route() {
    let dir = tempfile::tempdir().unwrap();
    tls_certificates(dir.path(), &["db.example.com"]);
    let f = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: tls-db, protocol: TLS}}
    hosts: [db.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: {NS}}}
spec:
  hosts: [db.example.com]
  gateways: [web]
  tcp:
  - match: [{{port: 9443}}]
    route: [{{destination: {{host: {api}, port: {{number: {PORT}}}}}}}]
"#,
        cert = f("cert.pem"),
        key = f("key.pem"),
        api = fqdn("api"),
    );
    let (mesh, gw) = api_behind_gateway("gateway-tls-tcp", &gateway, &[]);
    let outside = mesh.add_plain_pod("outside", ip(100)).unwrap();
    let ca = f("ca.pem");
    let resolve = format!("db.example.com:9443:{}", ip(2));
    let get = || {
        curl_with(
            &outside,
            &[
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                "https://db.example.com:9443/over-tls",
            ],
        )
    };
    let mut last = None;
    let served = wait_until(std::time::Duration::from_secs(30), || match get() {
        Ok(body) => body.contains(r#""service":"api""#) && body.contains("/over-tls"),
        Err(e) => {
            last = Some(e);
            false
        }
    });
    assert!(served, "{last:?}");
    // The gateway, not api, terminated the client's TLS: its listener counts the handshake.
    assert!(stat(&gw, "listener.0.0.0.0_9443.ssl.handshake") >= 1);
}
