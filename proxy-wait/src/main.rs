//! `meshd-proxy-wait [--url URL] [--timeout 120s]`: exits 0 once the sidecar's Envoy answers
//! 2xx on its readiness URL, 1 when it has not by the timeout (the kubelet then restarts the
//! proxy container), 2 on bad arguments.

use meshd_proxy_wait::{parse_timeout, wait_ready};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: meshd-proxy-wait [--url http://127.0.0.1:15021/healthz/ready] [--timeout 120s]";

fn main() -> ExitCode {
    let mut url = "http://127.0.0.1:15021/healthz/ready".to_string();
    let mut timeout = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--url", Some(v)) => url = v,
            ("--timeout", Some(v)) => match parse_timeout(&v) {
                Some(t) => timeout = t,
                None => {
                    eprintln!("meshd-proxy-wait: --timeout `{v}` is not a duration\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("meshd-proxy-wait: unexpected argument `{flag}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match wait_ready(&url, timeout, Duration::from_millis(200)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd-proxy-wait: {e}");
            ExitCode::FAILURE
        }
    }
}
