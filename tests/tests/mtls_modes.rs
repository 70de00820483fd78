//! PeerAuthentication through real Envoy: PERMISSIVE accepts plaintext and mTLS on the same
//! port (told apart by TLS inspection), STRICT refuses plaintext, moving a namespace from
//! PERMISSIVE to STRICT under steady load from meshed clients loses no request, and DISABLE
//! makes meshed clients switch to plaintext (auto mTLS).

mod authz_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use authz_support::*;
use meshd_e2e::*;

/// (status or error, the caller the server's app saw: the client's SPIFFE ID over mTLS).
fn call(pod: &Pod, url: &str) -> String {
    match pod.request("GET", url, &[], None) {
        Ok(r) => {
            let caller = r
                .json()
                .ok()
                .and_then(|v| v["caller"].as_str().map(String::from));
            format!("{} {}", r.status, caller.as_deref().unwrap_or("plaintext"))
        }
        Err(_) => "refused".into(),
    }
}

#[test]
fn permissive_strict_and_disable() {
    let w = World::start(
        "mtls",
        Options {
            mtls: "PERMISSIVE",
            other: false,
            plain: true,
        },
    );
    let plain = w.plain.as_ref().unwrap();
    let direct = format!("http://{}:{MAIN}/", w.server.ip());
    let meshed = format!("http://{SERVER}:{MAIN}/");
    let spiffe_a = "200 spiffe://cluster.local/ns/authz/sa/client-a";

    // PERMISSIVE: both chains, each caller served its way.
    let check = |what: &str, want: &str, f: &dyn Fn() -> String| {
        expect(what, want, f).unwrap();
    };
    check("PERMISSIVE: plaintext", "200 plaintext", &|| {
        call(plain, &direct)
    });
    check("PERMISSIVE: mTLS", spiffe_a, &|| call(&w.a, &meshed));

    // PERMISSIVE → STRICT while client A sends requests back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (a, url, stop) = (w.a.clone(), meshed.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match a.request("GET", &url, &[], None) {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    w.apply("mesh.yaml", &mesh_yaml(&w, "STRICT"), "-plaintext", false);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len() as u64
    );
    assert!(ok >= 20, "only {ok} requests in 3 s");

    // STRICT: plaintext refused, mTLS served.
    check("STRICT: plaintext", "refused", &|| call(plain, &direct));
    check("STRICT: mTLS", spiffe_a, &|| call(&w.a, &meshed));

    // DISABLE: the server has only a plaintext chain and client A's sidecar, seeing that,
    // talks plaintext to it.
    w.apply("mesh.yaml", &mesh_yaml(&w, "DISABLE"), "-mtls", false);
    check("DISABLE: meshed client", "200 plaintext", &|| {
        call(&w.a, &meshed)
    });
    check("DISABLE: plaintext", "200 plaintext", &|| {
        call(plain, &direct)
    });
}

/// The world's config with the namespace PeerAuthentication in `mode`.
fn mesh_yaml(w: &World, mode: &str) -> String {
    let current = std::fs::read_to_string(w.mesh.config_dir().join("mesh.yaml")).unwrap();
    let (before, _) = current
        .split_once("apiVersion: security.istio.io/v1\nkind: PeerAuthentication")
        .unwrap();
    format!("{before}{}", peer_authentication(mode))
}
