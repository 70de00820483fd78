//! Reading what happened, so that a test asserts the specific outcome it claims: Envoy stats
//! that must exist (a missing stat is an error naming it, never a 0), why a request got no HTTP
//! answer (refused, reset, closed, timed out), and `curl`'s exit codes.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Pod, SidecarPod, wait_until};

/// One Envoy counter or gauge of `pod`, by exact name. An error naming the stat (and listing
/// the ones Envoy has in the same scope or with the same last segment) when Envoy does not have
/// it: a missing stat is never read as 0. A stat Envoy creates only once something happened
/// (per-code counters such as `upstream_rq_200`) must be waited for: [`wait_envoy_stat`].
pub fn envoy_stat(pod: &SidecarPod, name: &str) -> anyhow::Result<u64> {
    let stats = pod
        .envoy_stats()
        .with_context(|| format!("reading Envoy's stats in pod {} for {name}", pod.name))?;
    stat_in(&stats, name).with_context(|| format!("Envoy in pod {}", pod.name))
}

/// The value of stat `name` in Envoy's `/stats` text.
fn stat_in(stats: &str, name: &str) -> anyhow::Result<u64> {
    let value = stats.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        (k == name).then(|| v.trim())
    });
    if let Some(v) = value {
        return v
            .parse()
            .with_context(|| format!("stat {name} is not a number: {v}"));
    }
    let (scope, last) = name.rsplit_once('.').unwrap_or(("", name));
    let similar: Vec<&str> = stats
        .lines()
        .filter(|l| {
            l.split_once(": ")
                .is_some_and(|(k, _)| k.starts_with(scope) || k.ends_with(last))
        })
        .take(20)
        .collect();
    bail!("no stat {name}; stats in {scope:?} or ending in {last:?}: {similar:#?}")
}

/// Waits until Envoy in `pod` has stat `name` and `ok` holds for its value; returns the value.
/// For stats that appear only once something happened, and for counters that move after the
/// request that causes them has been answered.
pub fn wait_envoy_stat(
    pod: &SidecarPod,
    name: &str,
    timeout: Duration,
    mut ok: impl FnMut(u64) -> bool,
) -> anyhow::Result<u64> {
    let mut last = None;
    let done = wait_until(timeout, || {
        let v = envoy_stat(pod, name);
        let hit = matches!(&v, Ok(v) if ok(*v));
        last = Some(v);
        hit
    });
    match last {
        Some(Ok(v)) if done => Ok(v),
        Some(Ok(v)) => bail!(
            "timed out after {timeout:?} waiting for Envoy stat {name} in pod {}: it stayed {v}",
            pod.name
        ),
        Some(Err(e)) => Err(e.context(format!("timed out after {timeout:?}"))),
        None => bail!("waiting for {name}: no attempt"),
    }
}

/// Why a request got no HTTP answer, read from its error chain. Denial tests assert the one
/// they expect, so a timeout or a DNS failure never passes for a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// Nothing accepted the connection: the SYN was answered with a RST (ECONNREFUSED).
    Refused,
    /// The peer reset an accepted connection (ECONNRESET, EPIPE): what Envoy does to a
    /// connection no filter chain takes, or one a network filter denies, when data is in flight.
    Reset,
    /// The peer closed an accepted connection without a response (EOF before a status line).
    Closed,
    /// No answer within the client's timeout.
    TimedOut,
    /// Anything else, with the error text.
    Other(String),
}

impl NoAnswer {
    /// Whether the peer accepted and then ended the connection without answering: the two ways
    /// a refusal by Envoy reaches an HTTP client (which one depends on whether the client's
    /// request was still unread when Envoy closed).
    pub fn is_reset_or_closed(&self) -> bool {
        matches!(self, NoAnswer::Reset | NoAnswer::Closed)
    }
}

/// Classifies an error from an HTTP client (reqwest, hyper) by walking its sources.
pub fn no_answer(e: &(dyn std::error::Error + 'static)) -> NoAnswer {
    use std::io::ErrorKind;
    let chain = std::iter::successors(Some(e), |e| e.source());
    for cause in chain {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::ConnectionRefused => return NoAnswer::Refused,
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => return NoAnswer::Reset,
                ErrorKind::UnexpectedEof => return NoAnswer::Closed,
                ErrorKind::TimedOut => return NoAnswer::TimedOut,
                _ => {}
            }
        }
        if let Some(h) = cause.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return NoAnswer::Closed;
            }
            if h.is_timeout() {
                return NoAnswer::TimedOut;
            }
        }
        if cause
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
        {
            return NoAnswer::TimedOut;
        }
    }
    NoAnswer::Other(
        std::iter::successors(Some(e), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": "),
    )
}

/// [`no_answer`] of a request made with [`Pod::request`] / [`Pod::get`]; panics (showing the
/// answer) when the request was answered.
pub fn expect_no_answer<T: std::fmt::Debug>(r: &anyhow::Result<T>) -> NoAnswer {
    match r {
        Ok(answer) => panic!("expected no HTTP answer, got {answer:?}"),
        Err(e) => no_answer(e.as_ref()),
    }
}

/// curl's exit codes the tests assert (`man curl`, EXIT CODES).
pub mod curl_exit {
    /// Failed to connect (refused, unreachable).
    pub const COULDNT_CONNECT: i32 = 7;
    /// An HTTP/2 framing error, e.g. the connection broke while curl sent its preface.
    pub const HTTP2: i32 = 16;
    /// Timed out.
    pub const TIMED_OUT: i32 = 28;
    /// The TLS handshake failed (e.g. the server refused our protocol version or certificate).
    pub const SSL_CONNECT_ERROR: i32 = 35;
    /// The server closed the connection without sending anything.
    pub const GOT_NOTHING: i32 = 52;
    /// Sending failed (the peer closed or reset the connection).
    pub const SEND_ERROR: i32 = 55;
    /// Receiving failed (e.g. a TLS alert read after the handshake, as TLS 1.3 sends them).
    pub const RECV_ERROR: i32 = 56;
    /// The server's certificate did not verify against the trusted CAs.
    pub const PEER_FAILED_VERIFICATION: i32 = 60;
}

/// One `curl` run inside a pod.
#[derive(Debug)]
pub struct Curl {
    /// The exit code (`None`: killed by a signal).
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `curl -sS --max-time 10 <args>` inside `pod`. curl must be installed: a missing curl is
/// an error, never an outcome.
pub fn curl_in(pod: &Pod, args: &[&str]) -> Curl {
    let mut argv = vec!["curl", "-sS", "--max-time", "10"];
    argv.extend_from_slice(args);
    let out = pod
        .exec(&argv)
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?} in pod {}: {e}", pod.name));
    let c = Curl {
        exit: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // `ip netns exec` answers 255 when it cannot run curl at all.
    assert!(
        !matches!(c.exit, Some(127 | 255)),
        "curl could not run in pod {}: {c:?}",
        pod.name
    );
    c
}

#[cfg(test)]
mod tests {
    //! The classifier against real sockets on loopback: each way a peer can leave a request
    //! unanswered is told apart from the others, so a denial test cannot pass on a timeout.
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A GET to `addr` with reqwest (as the harness makes them), classified.
    fn get(addr: std::net::SocketAddr, timeout: Duration) -> NoAnswer {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .build()
                .unwrap()
                .get(format!("http://{addr}/"))
                .send()
                .await
        });
        let e = r.expect_err("no server answers here");
        no_answer(&e)
    }

    /// A server that accepts one connection, reads the request, then does `then` with it.
    fn serve_once(then: fn(TcpStream)) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            then(s);
        });
        addr
    }

    #[test]
    fn a_stat_is_found_by_its_exact_name_and_a_missing_one_is_an_error() {
        let stats = "cluster.a.upstream_rq_total: 0\ncluster.a.upstream_rq_200: 7\ncluster.ab.upstream_rq_200: 9\n";
        assert_eq!(stat_in(stats, "cluster.a.upstream_rq_total").unwrap(), 0);
        assert_eq!(stat_in(stats, "cluster.a.upstream_rq_200").unwrap(), 7);
        let e = stat_in(stats, "cluster.a.upstream_rq_503")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no stat cluster.a.upstream_rq_503"), "{e}");
        assert!(
            e.contains("cluster.a.upstream_rq_200: 7"),
            "the scope's stats listed: {e}"
        );
        assert!(
            stat_in(stats, "cluster.a").is_err(),
            "a prefix is not a stat"
        );
    }

    #[test]
    fn nothing_listening_is_refused() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(get(addr, Duration::from_secs(10)), NoAnswer::Refused);
    }

    #[test]
    fn closed_after_reading_is_closed() {
        let addr = serve_once(drop);
        assert_eq!(get(addr, Duration::from_secs(10)), NoAnswer::Closed);
    }

    #[test]
    fn reset_after_reading_is_reset() {
        // Zero linger: closing sends a RST instead of a FIN.
        let addr = serve_once(|s| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                s.set_nonblocking(true).unwrap();
                let s = tokio::net::TcpStream::from_std(s).unwrap();
                s.set_zero_linger().unwrap();
            });
        });
        assert_eq!(get(addr, Duration::from_secs(10)), NoAnswer::Reset);
    }

    #[test]
    fn no_answer_in_time_is_a_timeout_not_a_refusal() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (_held, _) = l.accept().unwrap();
            let _ = rx.recv();
        });
        let got = get(addr, Duration::from_millis(200));
        drop(tx);
        assert_eq!(got, NoAnswer::TimedOut);
        assert!(!got.is_reset_or_closed());
    }
}
