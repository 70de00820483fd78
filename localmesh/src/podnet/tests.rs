//! Pod network tests: they create network namespaces and run processes in them (root).

use super::*;
use std::io::Write;
use std::net::{TcpListener, TcpStream};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn prefix(tag: &str) -> String {
    format!(
        "pn{}{}{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

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

/// The gateway's MAC stays what it was as pods join (each pod's veth has a random MAC; a bridge
/// left alone takes the lowest of its ports').
#[test]
fn the_gateway_keeps_its_mac_as_pods_join() {
    let net = PodNetwork::create(&prefix("m"), (a("10.44.0.0"), 24)).unwrap();
    let mac = || {
        let out = net
            .node()
            .run(["ip", "-br", "link", "show", BRIDGE])
            .unwrap();
        out.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(mac(), "02:00:0a:2c:00:01");
    for i in 2..12u8 {
        net.add_pod(&format!("p{i}"), Ipv4Addr::new(10, 44, 0, i))
            .unwrap();
        assert_eq!(mac(), "02:00:0a:2c:00:01", "after pod {i} joined");
    }
}

#[test]
fn two_pods_talk_and_everything_is_removed() {
    let p = prefix("t");
    let (pa_ns, pb_ns, node_ns);
    {
        let net = PodNetwork::create(&p, (a("10.44.0.0"), 24)).unwrap();
        let pa = net.add_pod("a", a("10.44.0.2")).unwrap();
        let pb = net.add_pod("b", a("10.44.0.3")).unwrap();
        (pa_ns, pb_ns, node_ns) = (pa.netns.clone(), pb.netns.clone(), net.node().netns);
        assert_eq!(net.gateway(), a("10.44.0.1"));

        let l = pa
            .in_netns(|| TcpListener::bind("10.44.0.2:7000").unwrap())
            .unwrap();
        let server = serve_once(l, "hello from a");
        let got = pb
            .in_netns(|| read_all(TcpStream::connect("10.44.0.2:7000").unwrap()))
            .unwrap();
        assert_eq!(got, "hello from a");
        server.join().unwrap();

        // The node namespace reaches pods, and a pod reaches the gateway.
        let l = net
            .node()
            .in_netns(|| TcpListener::bind("10.44.0.1:7001").unwrap())
            .unwrap();
        let server = serve_once(l, "node");
        let got = pa
            .in_netns(|| read_all(TcpStream::connect("10.44.0.1:7001").unwrap()))
            .unwrap();
        assert_eq!(got, "node");
        server.join().unwrap();

        // The address does not exist in the machine's own namespace.
        assert!(TcpListener::bind("10.44.0.2:7002").is_err());

        // Host entries resolve inside pods through `ip netns exec`.
        net.set_hosts(&[
            (
                "billing-service.voicecore-ai.svc.cluster.local",
                a("240.240.0.7"),
            ),
            ("billing-service", a("240.240.0.7")),
        ])
        .unwrap();
        let out = pb
            .run([
                "getent",
                "hosts",
                "billing-service.voicecore-ai.svc.cluster.local",
            ])
            .unwrap();
        assert!(out.starts_with("240.240.0.7"), "{out}");
        let out = pb.run(["getent", "hosts", "a"]).unwrap();
        assert!(out.starts_with("10.44.0.2"), "{out}");

        // Processes: spawn, log, stop.
        let mut c = pa
            .spawn(["sh", "-c", "echo started; exec sleep 30"])
            .unwrap();
        assert!(wait_until(Duration::from_secs(5), || c
            .log_tail()
            .contains("started")));
        assert!(c.is_running());
        let st = c.stop();
        assert!(st.is_some());
        // A process left running inside a pod is killed with the network.
        let mut c2 = pb.spawn(["sleep", "30"]).unwrap();
        c2.grace = Duration::from_millis(10);
        std::mem::forget(c2);
        // uid switching.
        let out = pa
            .run([
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                "id",
                "-u",
            ])
            .unwrap();
        assert_eq!(out.trim(), "1337");
    }
    let left = list_netns();
    for ns in [&pa_ns, &pb_ns, &node_ns] {
        assert!(!left.contains(ns), "{ns} left behind");
        assert!(!Path::new("/etc/netns").join(ns).exists());
    }
    assert!(!Path::new(MARKER_DIR).join(&p).exists());
}

#[test]
fn others_can_exec_checks_ancestors() {
    assert!(others_can_exec(Path::new("/bin/sh")));
    let d = std::env::temp_dir().join(format!("pn-exec-{}", std::process::id()));
    let sub = d.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let f = sub.join("x");
    fs::write(&f, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(others_can_exec(&f));
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!others_can_exec(&f));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn envoy_binary_is_executable_by_the_proxy_uid() {
    let Ok(bin) = envoy_binary() else {
        eprintln!("no Envoy installed; skipping");
        return;
    };
    assert!(!envoy::is_script(&bin), "{} is a script", bin.display());
    assert!(others_can_exec(&bin));
}
