//! The sidecar's start and stop hooks, where Istio's pilot-agent does both: waiting until
//! Envoy is ready (`pilot-agent wait`) and draining it before the pod's end.
//!
//! The injector makes [`wait_ready`] the `istio-proxy` container's postStart hook under
//! `holdApplicationUntilProxyStarts` on the classic path (the kubelet starts the pod's next
//! container only after the hook returns), and [`drain`] its preStop hook: the kubelet sends
//! Envoy SIGTERM (on which stock Envoy exits at once) only after the hook returns, so the
//! inbound listener keeps answering for ProxyConfig `terminationDrainDuration` while the pod's
//! endpoint leaves the other sidecars' EDS. The hooks run inside the proxy's image, which is
//! stock Envoy (meshd's own, or `envoyproxy/envoy`) with no meshd in it, so the bootstrap init
//! container copies this binary into the pod's shared emptyDir. That copy lives in memory for
//! the pod's life, which is why this crate has no dependencies and speaks the one HTTP/1.1
//! request it needs with the standard library (a few hundred KB, against meshd's tens of MB).
//!
//! Every answer is hostile: the status line is read from at most [`MAX_RESPONSE_HEAD`] bytes
//! with a read timeout, and anything but `HTTP/1.x 2xx` counts as not ready.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The most of an answer read to find its status line.
pub const MAX_RESPONSE_HEAD: usize = 1024;

/// An `http://HOST:PORT/PATH` URL, the only kind the health listener has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub authority: String,
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("--url `{url}`: {reason}")]
    Url { url: String, reason: &'static str },
    /// Envoy did not answer 2xx before the deadline; `last` is what it did last.
    #[error("Envoy at {url} not ready after {after:?}: {last}")]
    NotReady {
        url: String,
        after: Duration,
        last: String,
    },
    /// The drain request got no 2xx (the wait happened anyway).
    #[error("Envoy did not drain ({url}): {last}")]
    DrainRefused { url: String, last: String },
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, WaitError> {
        let bad = |reason| WaitError::Url {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(bad("the host needs an explicit port"));
        }
        if authority.contains('@') {
            return Err(bad("credentials are not supported"));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("the path has spaces or control characters"));
        }
        Ok(HttpUrl {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// One GET: the answer's status code, or why there was none.
pub fn status(url: &HttpUrl, io_timeout: Duration) -> Result<u16, String> {
    request("GET", url, io_timeout)
}

/// One request with no body: the answer's status code, or why there was none.
fn request(method: &str, url: &HttpUrl, io_timeout: Duration) -> Result<u16, String> {
    let addrs: Vec<SocketAddr> = url
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", url.authority))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| format!("{} has no address", url.authority))?;
    let mut conn = TcpStream::connect_timeout(addr, io_timeout).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(io_timeout))
        .and_then(|()| conn.set_write_timeout(Some(io_timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: meshd-proxy-wait\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        url.path, url.authority
    );
    conn.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(MAX_RESPONSE_HEAD);
    let mut chunk = [0u8; 256];
    while head.len() < MAX_RESPONSE_HEAD && !head.contains(&b'\n') {
        let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        let room = MAX_RESPONSE_HEAD - head.len();
        head.extend_from_slice(&chunk[..n.min(room)]);
    }
    parse_status_line(&head)
}

/// `HTTP/1.x NNN ...` → NNN.
pub fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => code
            .parse()
            .map_err(|_| format!("not an HTTP status line: {:?}", truncate(&line))),
        _ => Err(format!("not an HTTP status line: {:?}", truncate(&line))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Polls `url` every `poll` until it answers 2xx, or fails once `timeout` has passed.
pub fn wait_ready(url: &str, timeout: Duration, poll: Duration) -> Result<(), WaitError> {
    let parsed = HttpUrl::parse(url)?;
    let started = Instant::now();
    loop {
        let last = match status(&parsed, Duration::from_secs(2)) {
            Ok(code) if (200..300).contains(&code) => return Ok(()),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e,
        };
        if started.elapsed() >= timeout {
            return Err(WaitError::NotReady {
                url: url.to_string(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(poll);
    }
}

/// Envoy's admin path that drains its inbound listeners gracefully: they keep accepting
/// through `--drain-time-s`, while every response carries `Connection: close` (HTTP/2: GOAWAY),
/// so callers move to the endpoints that stay. Outbound listeners are left alone: the app may
/// still call out while it finishes.
pub const DRAIN_PATH: &str = "/drain_listeners?inboundonly&graceful";

/// The preStop hook: asks Envoy at `admin` (`http://127.0.0.1:15000`) to drain its inbound
/// listeners, then waits `duration` either way (a drain Envoy refused still leaves it serving
/// until the hook returns; that wait is what keeps late requests answered). The error, if any,
/// says why the drain request failed.
pub fn drain(admin: &str, duration: Duration) -> Result<(), WaitError> {
    let parsed = HttpUrl::parse(&format!("{}{DRAIN_PATH}", admin.trim_end_matches('/')))?;
    let outcome = match request("POST", &parsed, Duration::from_secs(2)) {
        Ok(code) if (200..300).contains(&code) => Ok(()),
        Ok(code) => Err(format!("HTTP {code}")),
        Err(e) => Err(e),
    };
    std::thread::sleep(duration);
    outcome.map_err(|last| WaitError::DrainRefused {
        url: format!("{}{}", parsed.authority, parsed.path),
        last,
    })
}

/// `120s`, `2m`, `1500ms` or a bare number of seconds.
pub fn parse_timeout(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let (digits, unit) = match s.strip_suffix('s') {
        Some(d) => (d, 1),
        None => match s.strip_suffix('m') {
            Some(d) => (d, 60),
            None => (s, 1),
        },
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(unit).map(Duration::from_secs)
}

#[cfg(test)]
mod tests;
