//! `meshd-proxy-wait [--url URL] [--timeout 120s]`: exits 0 once the sidecar's Envoy answers
//! 2xx on its readiness URL, 1 when it has not by the timeout (the kubelet then restarts the
//! proxy container), 2 on bad arguments.
//!
//! `meshd-proxy-wait drain [--admin-url http://127.0.0.1:15000] [--duration 5s]`: the preStop
//! hook. Drains Envoy's inbound listeners, waits the duration, exits 0 even when Envoy refused
//! the drain (the kubelet sends SIGTERM next whatever the hook's code; the reason is printed).

use meshd_proxy_wait::{drain, parse_timeout, wait_ready};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: meshd-proxy-wait [--url http://127.0.0.1:15021/healthz/ready] [--timeout 120s]\n       meshd-proxy-wait drain [--admin-url http://127.0.0.1:15000] [--duration 5s]";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let draining = args.first().is_some_and(|a| a == "drain");
    if draining {
        args.remove(0);
    }
    let mut url = if draining {
        "http://127.0.0.1:15000"
    } else {
        "http://127.0.0.1:15021/healthz/ready"
    }
    .to_string();
    let mut duration = Duration::from_secs(if draining { 5 } else { 120 });
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value, draining) {
            ("--url", Some(v), false) | ("--admin-url", Some(v), true) => url = v,
            ("--timeout", Some(v), false) | ("--duration", Some(v), true) => {
                match parse_timeout(&v) {
                    Some(t) => duration = t,
                    None => {
                        eprintln!("meshd-proxy-wait: {flag} `{v}` is not a duration\n{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            _ => {
                eprintln!("meshd-proxy-wait: unexpected argument `{flag}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if draining {
        if let Err(e) = drain(&url, duration) {
            eprintln!("meshd-proxy-wait: {e}");
        }
        return ExitCode::SUCCESS;
    }
    match wait_ready(&url, duration, Duration::from_millis(200)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd-proxy-wait: {e}");
            ExitCode::FAILURE
        }
    }
}
