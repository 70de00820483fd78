//! PeerAuthentication through real Envoy: PERMISSIVE accepts plaintext and mTLS on the same
//! port (told apart by TLS inspection), STRICT refuses plaintext, moving a namespace from
//! PERMISSIVE to STRICT under steady load from meshed clients loses no request, and DISABLE
//! makes meshed clients switch to plaintext (auto mTLS).

use crate::authz_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use authz_support::*;
use meshd_e2e::*;

/// (status, the caller the server's app saw: the client's SPIFFE ID over mTLS), or `refused`
/// when the server's Envoy accepted the connection and closed or reset it unanswered (what a
/// port with no plaintext chain does); any other failure (a timeout...) is spelled out.
fn call(pod: &Pod, url: &str) -> String {
    match pod.request("GET", url, &[], None) {
        Ok(r) => {
            let caller = r
                .json()
                .ok()
                .and_then(|v| v["caller"].as_str().map(String::from));
            format!("{} {}", r.status, caller.as_deref().unwrap_or("plaintext"))
        }
        Err(e) => match no_answer(e.as_ref()) {
            n if n.is_reset_or_closed() => "refused".into(),
            n => format!("no answer: {n:?}"),
        },
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
    // The load runs from well before the switch until well after Envoy has it: waits on
    // request counts, not on time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let load = {
        let (a, url, stop, ok) = (w.a.clone(), meshed.clone(), stop.clone(), ok.clone());
        std::thread::spawn(move || {
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match a.request("GET", &url, &[], None) {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            failed
        })
    };
    let more = |n: u64, what: &str| {
        let from = ok.load(Ordering::Relaxed);
        wait_for(Duration::from_secs(30), what, || {
            ok.load(Ordering::Relaxed) >= from + n
        })
        .unwrap();
    };
    more(10, "requests before the switch");
    w.apply("mesh.yaml", &mesh_yaml(&w, "STRICT"), "-plaintext", false);
    more(20, "requests after the server's Envoy has STRICT");
    stop.store(true, Ordering::Relaxed);
    let failed = load.join().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len() as u64
    );

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
