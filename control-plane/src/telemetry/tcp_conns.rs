//! The TCP connections proxies report while they are open. A proxy logs a connection when its
//! upstream connects (client side only), every `reportingInterval` while it lasts, and when it
//! ends, each entry with the connection's byte counts so far; Istio's TCP metrics want the connection opened once,
//! closed once, and the bytes as they flow. This remembers, per reporter and connection, what
//! has already been counted.
//!
//! Bounded: at most [`MAX_OPEN`] connections are followed (entries older than [`STALE`], from
//! a proxy that went away mid-connection, are dropped first when the table is full). A
//! connection not followed is counted whole when it ends, so the totals stay right; it only
//! shows up later.

use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_OPEN: usize = 50_000;
pub const STALE: Duration = Duration::from_secs(3600);

/// One connection of one reporter's side.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ConnKey {
    pub workload: String,
    pub namespace: String,
    pub outbound: bool,
    /// The entry's stream id, or its downstream addresses when Envoy gave none.
    pub id: String,
}

struct Seen {
    sent: u64,
    received: u64,
    at: Instant,
}

/// What one entry adds to Istio's TCP metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub opened: bool,
    pub closed: bool,
    pub sent: u64,
    pub received: u64,
}

pub struct OpenConnections {
    open: Mutex<HashMap<ConnKey, Seen>>,
    max: usize,
}

impl Default for OpenConnections {
    fn default() -> Self {
        OpenConnections::with_max(MAX_OPEN)
    }
}

impl OpenConnections {
    pub fn with_max(max: usize) -> Self {
        OpenConnections {
            open: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Counts an entry of type `kind` with the connection's byte counts so far.
    pub fn step(&self, key: ConnKey, kind: AccessLogType, sent: u64, received: u64) -> Step {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let delta = |seen: &Seen| Step {
            sent: sent.saturating_sub(seen.sent),
            received: received.saturating_sub(seen.received),
            ..Step::default()
        };
        match kind {
            AccessLogType::TcpUpstreamConnected | AccessLogType::TcpPeriodic => {
                if let Some(seen) = open.get_mut(&key) {
                    let step = delta(seen);
                    *seen = Seen {
                        sent,
                        received,
                        at: now,
                    };
                    return step;
                }
                // The first entry of a connection opens it: the server side reports no
                // connect (see the generator's `with_tcp_log`), and a connection older than
                // this meshd is new to it. Without room, its end entry counts it whole.
                if !Self::room(&mut open, self.max, now) {
                    return Step::default();
                }
                open.insert(
                    key,
                    Seen {
                        sent,
                        received,
                        at: now,
                    },
                );
                Step {
                    opened: true,
                    sent,
                    received,
                    ..Step::default()
                }
            }
            AccessLogType::TcpConnectionEnd | AccessLogType::NotSet => match open.remove(&key) {
                Some(seen) => Step {
                    closed: true,
                    ..delta(&seen)
                },
                None => Step {
                    opened: true,
                    closed: true,
                    sent,
                    received,
                },
            },
            _ => Step::default(),
        }
    }

    fn room(open: &mut HashMap<ConnKey, Seen>, max: usize, now: Instant) -> bool {
        if open.len() >= max {
            open.retain(|_, s| now.duration_since(s.at) < STALE);
        }
        open.len() < max
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessLogType::*;

    fn key(id: &str) -> ConnKey {
        ConnKey {
            workload: "web".into(),
            namespace: "shop".into(),
            outbound: true,
            id: id.into(),
        }
    }

    fn step(opened: bool, closed: bool, sent: u64, received: u64) -> Step {
        Step {
            opened,
            closed,
            sent,
            received,
        }
    }

    #[test]
    fn a_long_connection_is_opened_once_closed_once_and_its_bytes_counted_as_they_flow() {
        let c = OpenConnections::default();
        assert_eq!(
            c.step(key("a"), TcpUpstreamConnected, 0, 0),
            step(true, false, 0, 0)
        );
        assert_eq!(
            c.step(key("a"), TcpPeriodic, 100, 10),
            step(false, false, 100, 10)
        );
        assert_eq!(
            c.step(key("a"), TcpPeriodic, 150, 10),
            step(false, false, 50, 0)
        );
        assert_eq!(
            c.step(key("a"), TcpConnectionEnd, 160, 30),
            step(false, true, 10, 20)
        );
        assert!(c.is_empty());
    }

    #[test]
    fn a_connection_first_seen_later_opens_then() {
        let c = OpenConnections::default();
        assert_eq!(
            c.step(key("b"), TcpPeriodic, 40, 4),
            step(true, false, 40, 4)
        );
        assert_eq!(
            c.step(key("b"), TcpConnectionEnd, 50, 5),
            step(false, true, 10, 1)
        );
        assert_eq!(
            c.step(key("d"), TcpConnectionEnd, 50, 5),
            step(true, true, 50, 5)
        );
        // Envoy's entries without a type (older proxies) are whole connections too.
        assert_eq!(c.step(key("c"), NotSet, 7, 8), step(true, true, 7, 8));
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_table_leaves_new_connections_to_their_end() {
        let c = OpenConnections::with_max(1);
        assert!(c.step(key("a"), TcpUpstreamConnected, 0, 0).opened);
        assert_eq!(
            c.step(key("b"), TcpUpstreamConnected, 0, 0),
            step(false, false, 0, 0)
        );
        assert_eq!(
            c.step(key("b"), TcpPeriodic, 5, 5),
            step(false, false, 0, 0)
        );
        assert_eq!(
            c.step(key("b"), TcpConnectionEnd, 9, 9),
            step(true, true, 9, 9)
        );
        assert_eq!(c.len(), 1);
        let other_side = ConnKey {
            outbound: false,
            ..key("a")
        };
        assert_eq!(
            c.step(other_side, TcpConnectionEnd, 1, 1),
            step(true, true, 1, 1)
        );
        assert_eq!(
            c.step(key("a"), TcpConnectionEnd, 3, 3),
            step(false, true, 3, 3)
        );
    }
}
