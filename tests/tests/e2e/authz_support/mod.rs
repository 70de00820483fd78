//! Shared by the `authz_*` and `mtls_*` end-to-end tests: the world of the translation table
//! (`xds/src/generate/authz_cases.rs`) in real pods: workload `server` (namespace
//! `authz`, HTTP on 8080 and 8081, TCP on 8082) behind a stock Envoy sidecar, client A
//! (`authz/client-a`) and client B (`outside/client-b`) behind theirs; optionally a second
//! workload `other` in `authz`, and a plain pod without sidecar.

pub use meshd_xds::generate::authz_cases as cases;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::bail;
use cases::{Client, Port, Probe};
use meshd_e2e::*;

pub const NS: &str = "authz";
pub const OUTSIDE: &str = "outside";
pub const SERVER: &str = "server.authz.svc.cluster.local";
pub const OTHER: &str = "other.authz.svc.cluster.local";
pub const MAIN: u16 = 8080;
pub const SECOND: u16 = 8081;
pub const TCP: u16 = 8082;
pub const DENIED_BODY: &str = "RBAC: access denied";

pub fn server_vip() -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, 20)
}

pub fn other_vip() -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, 23)
}

pub fn service(name: &str, ns: &str, vip: Ipv4Addr, ports: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  addresses: [{vip}]
  ports: {ports}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels: {{app: {name}}}
---
"#
    )
}

pub fn workload(name: &str, ns: &str, ip: Ipv4Addr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  address: {ip}
  labels: {{app: {name}}}
  serviceAccount: {name}
---
"#
    )
}

/// The namespace-wide PeerAuthentication of `authz`.
pub fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
}

/// An AuthorizationPolicy `name` in `namespace` with `spec` (a YAML flow mapping's entries).
pub fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{{spec}}}\n---\n"
    )
}

/// An AuthorizationPolicy selecting the server (`app: server`).
pub fn server_policy(name: &str, spec: &str) -> String {
    let sep = if spec.is_empty() { "" } else { ", " };
    policy(
        NS,
        name,
        &format!("selector: {{matchLabels: {{app: server}}}}{sep}{spec}"),
    )
}

pub struct World {
    pub mesh: Mesh,
    pub server: SidecarPod,
    pub a: SidecarPod,
    pub b: SidecarPod,
    pub other: Option<SidecarPod>,
    pub plain: Option<Pod>,
    _apps: Vec<Child>,
}

pub struct Options {
    /// The PeerAuthentication mode of namespace `authz` (STRICT, PERMISSIVE, DISABLE).
    pub mtls: &'static str,
    /// Also start workload `other` (`app: other`, 10.44.0.23) in `authz`.
    pub other: bool,
    /// Also start a pod without sidecar (10.44.0.30).
    pub plain: bool,
}

impl World {
    pub fn start(name: &str, opts: Options) -> World {
        let mut config = String::new();
        config.push_str(&service(
            "server",
            NS,
            server_vip(),
            &format!(
                "[{{number: {MAIN}, name: http, protocol: HTTP}}, {{number: {SECOND}, name: http-second, protocol: HTTP}}, {{number: {TCP}, name: tcp, protocol: TCP}}]"
            ),
        ));
        config.push_str(&workload("server", NS, ip(20)));
        // The clients serve too (a sidecar needs an inbound port for a valid inbound listener).
        let client_port = "[{number: 9090, name: http, protocol: HTTP}]";
        config.push_str(&service(
            "client-a",
            NS,
            Ipv4Addr::new(10, 96, 0, 21),
            client_port,
        ));
        config.push_str(&workload("client-a", NS, ip(21)));
        config.push_str(&service(
            "client-b",
            OUTSIDE,
            Ipv4Addr::new(10, 96, 0, 22),
            client_port,
        ));
        config.push_str(&workload("client-b", OUTSIDE, ip(22)));
        if opts.other {
            config.push_str(&service(
                "other",
                NS,
                other_vip(),
                &format!("[{{number: {MAIN}, name: http, protocol: HTTP}}]"),
            ));
            config.push_str(&workload("other", NS, ip(23)));
        }
        config.push_str(&peer_authentication(opts.mtls));
        let mesh = Mesh::start(MeshOptions::named(name).config("mesh.yaml", &config))
            .expect("mesh starts");
        mesh.set_hosts(&[(SERVER, server_vip()), (OTHER, other_vip())])
            .unwrap();
        let server = mesh.add_sidecar_pod("server.authz", ip(20), MAIN).unwrap();
        // The server's other ports, each its own app.
        let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
        let mut apps = Vec::new();
        for port in [SECOND, TCP] {
            let p = port.to_string();
            apps.push(
                server
                    .spawn([meshd.as_str(), "workload", "--name", "server", "--port", &p])
                    .unwrap(),
            );
            wait_for(Duration::from_secs(10), "server app port", || {
                server
                    .in_netns(move || {
                        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
                    })
                    .unwrap_or(false)
            })
            .unwrap();
        }
        let a = mesh
            .add_sidecar_pod("client-a.authz", ip(21), 9090)
            .unwrap();
        let b = mesh
            .add_sidecar_pod("client-b.outside", ip(22), 9090)
            .unwrap();
        let other = opts
            .other
            .then(|| mesh.add_sidecar_pod("other.authz", ip(23), MAIN).unwrap());
        let plain = opts
            .plain
            .then(|| mesh.add_plain_pod("plain", ip(30)).unwrap());
        World {
            mesh,
            server,
            a,
            b,
            other,
            plain,
            _apps: apps,
        }
    }

    pub fn client(&self, c: Client) -> &SidecarPod {
        match c {
            Client::A => &self.a,
            Client::B => &self.b,
        }
    }

    pub fn url(p: &Probe) -> String {
        let port = match p.port {
            Port::Main => MAIN,
            Port::Second => SECOND,
        };
        let host = if p.by_vip {
            server_vip().to_string()
        } else {
            SERVER.to_string()
        };
        format!("http://{host}:{port}{}", p.path)
    }

    pub fn probe(&self, p: &Probe) -> anyhow::Result<HttpResponse> {
        self.client(p.client)
            .request(p.method, &Self::url(p), p.headers, None)
    }

    /// Write config `file` and wait until the server's Envoy serves listeners whose config
    /// contains `marker` (or, with `present: false`, no longer contains it).
    pub fn apply(&self, file: &str, yaml: &str, marker: &str, present: bool) {
        self.mesh.write_config(file, yaml).unwrap();
        self.wait_listener(&self.server, marker, present);
    }

    pub fn wait_listener(&self, pod: &SidecarPod, marker: &str, present: bool) {
        let what = format!(
            "{marker:?} {} the listeners of {}",
            if present { "in" } else { "gone from" },
            pod.name
        );
        wait_for(Duration::from_secs(20), &what, || {
            pod.envoy_admin("/config_dump?resource=dynamic_listeners")
                .is_ok_and(|(s, body)| s == 200 && body.contains(marker) == present)
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\ncontrol plane log:\n{}",
                tail(&self.mesh.control_plane_log(), 30)
            )
        });
    }
}

/// One outcome as `200`, `403 RBAC: access denied`, or why there was no answer
/// (`no answer: Closed`, ... see [`NoAnswer`]).
pub fn outcome(r: &anyhow::Result<HttpResponse>) -> String {
    match r {
        Ok(r) if r.status == 403 => format!("403 {}", r.body.trim()),
        Ok(r) => r.status.to_string(),
        Err(e) => format!("no answer: {:?}", no_answer(e.as_ref())),
    }
}

/// Whether an [`outcome`] is a connection that was accepted and then closed or reset without an
/// answer: how a TCP connection denied by the network RBAC filter ends for the caller.
pub fn closed_unanswered(outcome: &str) -> bool {
    outcome == format!("no answer: {:?}", NoAnswer::Closed)
        || outcome == format!("no answer: {:?}", NoAnswer::Reset)
}

/// Poll `f` until it answers `want` three times in a row (a connection opened under the previous
/// config may serve one more request before it drains); the last outcome on timeout.
pub fn settle(want: &str, mut f: impl FnMut() -> String) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut streak = 0;
    loop {
        let got = f();
        if got == want {
            streak += 1;
            if streak == 3 {
                return Ok(());
            }
        } else {
            streak = 0;
            if Instant::now() > deadline {
                return Err(got);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn allowed() -> String {
    "200".into()
}

pub fn denied() -> String {
    format!("403 {DENIED_BODY}")
}

/// `settle` with a message naming what was expected.
pub fn expect(what: &str, want: &str, f: impl FnMut() -> String) -> anyhow::Result<()> {
    match settle(want, f) {
        Ok(()) => Ok(()),
        Err(got) => bail!("{what}: want {want}, got {got}"),
    }
}
