//! Istio's capture rules as `meshd init-iptables` builds them, installed in network-namespace pods:
//! outbound and inbound traffic land on Envoy's capture ports, the proxy uid, excluded ports and
//! loopback do not. Needs root (network namespaces, iptables).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use meshd_e2e::*;

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Accept one connection on `l` in the background and answer `msg`; returns the local
/// address the server saw the connection arrive on.
fn serve_once(l: TcpListener, msg: &'static str) -> std::thread::JoinHandle<SocketAddr> {
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let local = s.local_addr().unwrap();
        s.write_all(msg.as_bytes()).unwrap();
        local
    })
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn capture_rules_redirect_outbound_and_inbound() {
    let p = format!("cap{}", std::process::id());
    let net = PodNetwork::create(&p, (a("10.45.0.0"), 24)).unwrap();
    let client = net.add_pod("client", a("10.45.0.2")).unwrap();
    let server = net.add_pod("server", a("10.45.0.3")).unwrap();
    let rules =
        meshd::iptables::build_rules(&meshd::iptables::InitIptablesArgs::default()).unwrap();
    for pod in [&client, &server] {
        let mut cmd = pod.exec(["iptables-restore", "--noflush"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut ch = cmd.spawn().unwrap();
        ch.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        let out = ch.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let saved = client.run(["iptables-save", "-t", "nat"]).unwrap();
    assert!(
        saved.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
        "{saved}"
    );

    // Outbound: a root (non-1337) connection to another pod's port 9999 and to a Class-E VIP
    // both land on the outbound capture port.
    for (dest, msg) in [
        ("10.45.0.3:9999", "captured-pod"),
        ("240.240.0.1:80", "captured-class-e"),
    ] {
        let l = client
            .in_netns(|| TcpListener::bind("0.0.0.0:15001").unwrap())
            .unwrap();
        let srv = serve_once(l, msg);
        let (got, peer) = client
            .in_netns(|| {
                let s = TcpStream::connect_timeout(&dest.parse().unwrap(), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect {dest}: {e}"));
                let peer = s.peer_addr().unwrap();
                (read_all(s), peer)
            })
            .unwrap();
        assert_eq!(got, msg);
        // The client still believes it talks to the original destination.
        assert_eq!(peer.to_string(), dest);
        assert_eq!(srv.join().unwrap().port(), 15001);
    }

    // The proxy uid is not captured: its connection to 10.45.0.3:9999 goes out and is
    // captured on the server side by the inbound rule (→ 15006).
    let l = server
        .in_netns(|| TcpListener::bind("0.0.0.0:15006").unwrap())
        .unwrap();
    let srv = serve_once(l, "inbound");
    let out = client
        .run([
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.45.0.3/9999 && timeout 5 cat <&3",
        ])
        .unwrap();
    assert_eq!(out, "inbound");
    assert_eq!(srv.join().unwrap().port(), 15006);

    // Excluded inbound ports (15021) are not captured: nothing listens there → refused.
    let err = client.run([
        "setpriv",
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/10.45.0.3/15021",
    ]);
    assert!(err.is_err());

    // Loopback traffic of the app is not captured.
    let l = client
        .in_netns(|| TcpListener::bind("127.0.0.1:8080").unwrap())
        .unwrap();
    let srv = serve_once(l, "local");
    let got = client
        .in_netns(|| read_all(TcpStream::connect("127.0.0.1:8080").unwrap()))
        .unwrap();
    assert_eq!(got, "local");
    assert_eq!(srv.join().unwrap().port(), 8080);
}
