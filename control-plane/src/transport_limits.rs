//! The limits every listener enforces (one struct, one flag each, `MESHD_<NAME>` too), and the
//! per-remote-IP budget of failed authentications. Each default says why it is what it is.

use clap::Args;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

fn parse_duration(s: &str) -> Result<Duration, String> {
    meshd_model::duration::parse(s)
}

#[derive(Args, Clone, Debug, PartialEq)]
pub struct TransportLimits {
    /// Open connections per xDS port (15010 and 15012 each); connection N+1 is closed at once.
    /// Above the 10 000-proxy benchmark with room for a reconnect overlap, far below the
    /// descriptor limit meshd raises itself to: a flood cannot starve the other ports.
    #[arg(long, env = "MESHD_XDS_MAX_CONNECTIONS", default_value_t = 30_000)]
    pub xds_max_connections: usize,
    /// Open connections on the admin port and on the webhook port, each: probes, scrapes and
    /// the API server need a handful; the cap keeps a flood from taking every descriptor.
    #[arg(long, env = "MESHD_HTTP_MAX_CONNECTIONS", default_value_t = 512)]
    pub http_max_connections: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on every HTTP/2 connection. RFC 9113's
    /// recommended minimum; a sidecar uses one ADS stream, the API server multiplexes reviews.
    #[arg(long, env = "MESHD_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub max_concurrent_streams: u32,
    /// Streams a connection may make the server reset (malformed frames, refused streams:
    /// "MadeYouReset") before it gets GOAWAY ENHANCE_YOUR_CALM. hyper's default, which tonic
    /// turns off.
    #[arg(long, env = "MESHD_H2_MAX_LOCAL_ERROR_RESETS", default_value_t = 1024)]
    pub max_local_error_reset_streams: usize,
    /// Streams a peer may reset before the server accepted them ("Rapid Reset") before GOAWAY.
    /// h2's default.
    #[arg(long, env = "MESHD_H2_MAX_PENDING_ACCEPT_RESETS", default_value_t = 20)]
    pub max_pending_accept_reset_streams: usize,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: hyper's default; a sidecar's request headers are < 1 KB.
    #[arg(long, env = "MESHD_MAX_HEADER_LIST_SIZE", default_value_t = 16 << 10)]
    pub max_header_list_size: u32,
    /// A new connection must complete TLS, the HTTP/2 preface and its first request within
    /// this, else it is closed. Envoy opens its ADS stream right after connecting.
    #[arg(long, env = "MESHD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// HTTP/1: a request's headers must arrive within this (hyper enforces it only with a
    /// timer, which axum's own server does not set).
    #[arg(long, env = "MESHD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// An xDS connection with no stream open this long is closed. A sidecar always holds its
    /// ADS stream, so only leftovers (a CA client between calls) reach it.
    #[arg(long, env = "MESHD_XDS_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub xds_idle_timeout: Duration,
    /// An admin or webhook connection with no request in flight this long is closed: longer
    /// than Go's client idle timeout (90 s), so the API server closes first.
    #[arg(long, env = "MESHD_HTTP_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// xDS connections get GOAWAY after this, ±10% per connection (Istio's
    /// MAX_CONNECTION_AGE): proxies rebalance over replicas, and a fleet connected at once
    /// does not reconnect at once.
    #[arg(long, env = "MESHD_XDS_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub xds_max_connection_age: Duration,
    /// After its GOAWAY, how long an aged connection's streams get before it is closed
    /// (Istio's MAX_CONNECTION_AGE_GRACE).
    #[arg(long, env = "MESHD_XDS_MAX_CONNECTION_AGE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub xds_max_connection_age_grace: Duration,
    /// HTTP/2 PING interval on xDS connections: a vanished proxy's connection is found.
    #[arg(long, env = "MESHD_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// A PING unanswered this long closes the connection (tonic's default).
    #[arg(long, env = "MESHD_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// Largest ADS request message (Istio's 4 MiB). An EDS request naming 10 000 clusters is
    /// under 1 MB.
    #[arg(long, env = "MESHD_XDS_MAX_REQUEST_BYTES", default_value_t = meshd_ads::DEFAULT_MAX_REQUEST_BYTES)]
    pub xds_max_request_bytes: usize,
    /// Resource names one ADS stream may hold subscribed per type.
    #[arg(long, env = "MESHD_XDS_MAX_SUBSCRIBED_NAMES", default_value_t = meshd_ads::DEFAULT_MAX_SUBSCRIBED_NAMES)]
    pub xds_max_subscribed_names: usize,
    /// Failed authentications a remote IP may make in a burst on the gRPC ports before it is
    /// refused (RESOURCE_EXHAUSTED) without a check; 0 turns the limit off. A sidecar fails
    /// only with an expired credential, and retries with backoff.
    #[arg(long, env = "MESHD_AUTH_FAILURE_BURST", default_value_t = 20)]
    pub auth_failure_burst: u32,
    /// How fast that budget refills, per minute.
    #[arg(long, env = "MESHD_AUTH_FAILURES_PER_MINUTE", default_value_t = 60)]
    pub auth_failures_per_minute: u32,
    /// Kubernetes mode: TokenReviews in flight at once; more wait. Bounds what unknown tokens
    /// cost the API server.
    #[arg(long, env = "MESHD_TOKEN_REVIEW_CONCURRENCY", default_value_t = 16)]
    pub token_review_concurrency: usize,
    /// Kubernetes mode: how long a token the API server refused is refused again without a
    /// review. Short: a token that was not valid yet becomes valid only by being replaced.
    #[arg(long, env = "MESHD_TOKEN_REVIEW_NEGATIVE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub token_review_negative_ttl: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            xds_max_connections: 30_000,
            http_max_connections: 512,
            max_concurrent_streams: 100,
            max_local_error_reset_streams: 1024,
            max_pending_accept_reset_streams: 20,
            max_header_list_size: 16 << 10,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            xds_idle_timeout: Duration::from_secs(300),
            http_idle_timeout: Duration::from_secs(120),
            xds_max_connection_age: Duration::from_secs(30 * 60),
            xds_max_connection_age_grace: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            xds_max_request_bytes: meshd_ads::DEFAULT_MAX_REQUEST_BYTES,
            xds_max_subscribed_names: meshd_ads::DEFAULT_MAX_SUBSCRIBED_NAMES,
            auth_failure_burst: 20,
            auth_failures_per_minute: 60,
            token_review_concurrency: 16,
            token_review_negative_ttl: Duration::from_secs(10),
        }
    }
}

/// Peers tracked at most: past it, peers whose budget has refilled are forgotten, and if all
/// are still short, a new peer is not tracked (memory stays bounded under a spread flood).
const MAX_TRACKED_PEERS: usize = 65_536;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket of failed authentications per remote IP.
pub struct AuthFailures {
    burst: f64,
    per_second: f64,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
    throttled: std::sync::atomic::AtomicU64,
}

impl AuthFailures {
    pub fn new(burst: u32, per_minute: u32) -> AuthFailures {
        AuthFailures {
            burst: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
            peers: Mutex::new(HashMap::new()),
            throttled: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Requests refused so far for coming from an address over its budget.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let earned = now.duration_since(b.at).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + earned).min(self.burst);
        b.at = now;
    }

    /// Whether `ip` may try to authenticate now.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.burst == 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = peers.get_mut(&ip) else {
            return true;
        };
        self.refill(b, now);
        let ok = b.tokens >= 1.0;
        if b.tokens >= self.burst {
            peers.remove(&ip);
        }
        if !ok {
            self.throttled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }

    /// `ip` failed to authenticate.
    pub fn failed(&self, ip: IpAddr) {
        if self.burst == 0.0 {
            return;
        }
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&ip) && peers.len() >= MAX_TRACKED_PEERS {
            let (burst, rate) = (self.burst, self.per_second);
            peers.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if peers.len() >= MAX_TRACKED_PEERS {
                return;
            }
        }
        let b = peers.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
        if b.tokens < 1.0 {
            tracing::warn!(peer = %ip, "too many failed authentications: refusing this address for now");
        }
    }

    /// Peers currently tracked.
    pub fn tracked(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        limits: TransportLimits,
    }

    #[test]
    fn flag_defaults_are_the_struct_defaults() {
        let parsed = Only::try_parse_from(["meshd"]).unwrap().limits;
        assert_eq!(parsed, TransportLimits::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_failing_past_its_burst_is_refused_until_the_budget_refills() {
        let f = AuthFailures::new(3, 60);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(f.allow(a));
            f.failed(a);
        }
        assert!(!f.allow(a), "the burst is spent");
        assert!(f.allow(b), "other peers are not affected");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(f.allow(a), "one failure earned back per second");
        f.failed(a);
        assert!(!f.allow(a));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(f.allow(a));
        assert_eq!(f.tracked(), 0, "a refilled peer is forgotten");
    }

    #[test]
    fn burst_zero_turns_the_limit_off() {
        let f = AuthFailures::new(0, 60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            f.failed(a);
        }
        assert!(f.allow(a));
        assert_eq!(f.tracked(), 0);
    }
}
