//! Endpoint churn (issue 19), the load that drives a control plane's CPU in a rolling restart:
//! endpoints of the mesh's services replaced at a steady rate (the old pod gone, a new one with a
//! new address) while every simulated proxy stays connected. Measures, per write of the config,
//! the time until the last proxy that holds a changed service has ACKed it; EDS responses and
//! bytes per proxy; meshd's CPU; and that proxies holding none of the changed services receive
//! nothing.
//!
//! The churned endpoints are WorkloadEntries of their own (`churn.yaml`, one per service of the
//! churned namespaces), so no simulated proxy's own workload moves. Change `id` gives its
//! endpoint the address `11.x.y.z` spelling `id`: a proxy holds change `id` once a response it
//! answered carries that endpoint or a newer one (a snapshot holds every earlier write, and a
//! Delta push carries every change the proxy lacks).

use crate::acks::Acks;
use crate::churn_id::address;
use crate::mesh::{self, Shape};
use crate::server::{Server, cpu_seconds};
use crate::{Args, ms, pct};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the churn is written: each write carries `rate / WRITES_PER_SECOND` changes.
const WRITES_PER_SECOND: u32 = 20;

/// The churned endpoints: one per service of the first `namespaces` namespaces (all when 0).
pub struct Pool {
    /// The service index of each churned endpoint.
    services: Vec<usize>,
}

impl Pool {
    pub fn new(shape: &Shape, namespaces: usize) -> Pool {
        let limit = if namespaces == 0 {
            usize::MAX
        } else {
            namespaces
        };
        Pool {
            services: (0..shape.services)
                .filter(|s| s % shape.namespaces.max(1) < limit)
                .collect(),
        }
    }

    fn service_of(&self, id: u32) -> usize {
        self.services[(id as usize - 1) % self.services.len()]
    }
}

/// Writes `churn.yaml`: endpoint `i` of the pool at the address of change `current[i]`. Written
/// aside and renamed in, so meshd never reads half a file.
pub fn write(dir: &Path, shape: &Shape, pool: &Pool, current: &[u32]) -> anyhow::Result<()> {
    let mut y = String::with_capacity(current.len() * 260);
    for (i, id) in current.iter().enumerate() {
        let svc = pool.services[i];
        let name = mesh::service_name(svc);
        let ns = mesh::namespace(svc, shape);
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: churn-{i}\n  namespace: {ns}\nspec:\n  address: {}\n  labels: {{app: {name}, version: v1}}\n  serviceAccount: {name}\n---\n",
            address(*id)
        );
    }
    let aside = dir.join(".churn.tmp");
    std::fs::write(&aside, y)?;
    std::fs::rename(&aside, dir.join("churn.yaml")).context("renaming churn.yaml in")
}

/// The initial churn file: endpoint `i` at change `i + 1`.
pub fn initial(dir: &Path, shape: &Shape, pool: &Pool) -> anyhow::Result<()> {
    let current: Vec<u32> = (1..=pool.services.len() as u32).collect();
    write(dir, shape, pool, &current)
}

/// One write of the churn: when, and per namespace index the newest change id it made there.
struct Written {
    at: Instant,
    newest: BTreeMap<usize, u32>,
}

/// Runs the churn for `--churn-seconds` at `--churn` changes/s and returns the report rows.
pub async fn rows(
    args: &Args,
    shape: &Shape,
    acks: &mut Acks,
    cache: &crate::client::DecodeCache,
    server: &Server,
) -> anyhow::Result<Vec<(String, String)>> {
    let pool = Pool::new(shape, args.churn_namespaces);
    let dir = args.work_dir.join("config");
    let per_write = (args.churn / WRITES_PER_SECOND).max(1);
    let writes = args.churn_seconds * WRITES_PER_SECOND as u64;
    let mut current: Vec<u32> = (1..=pool.services.len() as u32).collect();
    let mut next_id = current.len() as u32 + 1;
    let ns_of = |svc: usize| svc % shape.namespaces.max(1);
    let proxy_ns: Vec<usize> = (0..args.proxies)
        .map(|w| ns_of(w % shape.services))
        .collect();
    let scoped = args.sidecar_scoping;
    let churned_ns: std::collections::BTreeSet<usize> =
        pool.services.iter().map(|s| ns_of(*s)).collect();
    // Proxies that hold none of the churned services: with Sidecar scoping, those outside
    // the churned namespaces.
    let outside: Vec<usize> = (0..args.proxies)
        .filter(|p| scoped && !churned_ns.contains(&proxy_ns[*p]))
        .collect();
    acks.drain();
    let answers_before: Vec<u64> = outside
        .iter()
        .map(|p| acks.answers[*p].iter().sum())
        .collect();
    let by_type = |acks: &Acks| {
        let mut sum = [0u64; 5];
        for a in &acks.answers {
            for (s, n) in sum.iter_mut().zip(a) {
                *s += n;
            }
        }
        sum
    };
    let types_before = by_type(acks);
    let bytes0 = cache.bytes_received.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(server.pid());
    let t0 = Instant::now();
    let mut log: Vec<Written> = Vec::with_capacity(writes as usize);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / WRITES_PER_SECOND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for _ in 0..writes {
        tick.tick().await;
        let mut newest = BTreeMap::new();
        for _ in 0..per_write {
            let slot = (next_id as usize - 1) % current.len();
            current[slot] = next_id;
            newest.insert(ns_of(pool.service_of(next_id)), next_id);
            next_id += 1;
        }
        write(&dir, shape, &pool, &current)?;
        log.push(Written {
            at: Instant::now(),
            newest,
        });
        acks.drain();
    }
    let churned_for = t0.elapsed();
    // Until the last write has reached every proxy it concerns.
    let deadline = Instant::now() + Duration::from_secs(args.phase_timeout);
    let mut latencies = Vec::with_capacity(log.len());
    loop {
        acks.drain();
        latencies.clear();
        let mut missing = 0usize;
        for w in &log {
            let mut worst = Duration::ZERO;
            for (p, ns) in proxy_ns.iter().enumerate() {
                let threshold = if scoped {
                    match w.newest.get(ns) {
                        Some(id) => *id,
                        None => continue,
                    }
                } else {
                    *w.newest.values().max().unwrap_or(&0)
                };
                match acks.churn_seen(p, threshold) {
                    Some(at) => worst = worst.max(at.saturating_duration_since(w.at)),
                    None => missing += 1,
                }
            }
            latencies.push(worst);
        }
        if missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "endpoint churn: {missing} (write, proxy) pairs never saw their change in {} s",
                args.phase_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = cpu_seconds(server.pid()) - cpu0;
    let bytes = cache.bytes_received.load(Ordering::Relaxed) - bytes0;
    let outside_answers: u64 = outside
        .iter()
        .zip(&answers_before)
        .map(|(p, before)| acks.answers[*p].iter().sum::<u64>() - before)
        .sum();
    let affected = args.proxies - outside.len();
    let secs = churned_for.as_secs_f64();
    let per_type: Vec<String> = by_type(acks)
        .iter()
        .zip(types_before)
        .zip(crate::client::TYPES)
        .map(|((after, before), t)| {
            let short = t.rsplit('.').next().unwrap_or(t);
            let n = (after - before) as f64 / affected.max(1) as f64 / secs;
            format!("{short} {n:.2}")
        })
        .collect();
    latencies.sort();
    let rows = vec![
        (
            format!(
                "endpoint churn: {} changes/s for {:.0} s over {} endpoints ({} namespaces), {} writes",
                per_write * WRITES_PER_SECOND,
                secs,
                pool.services.len(),
                churned_ns.len(),
                log.len()
            ),
            format!("{} proxies hold the churned services", affected),
        ),
        (
            "churn: a write → the last proxy holding a changed service ACKed it".into(),
            format!(
                "p50 {}, p99 {}, max {}",
                ms(pct(&latencies, 0.5)),
                ms(pct(&latencies, 0.99)),
                ms(*latencies.last().unwrap_or(&Duration::ZERO))
            ),
        ),
        (
            "churn: per affected proxy".into(),
            format!(
                "{:.1} KB/s of xDS; responses/s: {}",
                bytes as f64 / affected.max(1) as f64 / secs / 1024.0,
                per_type.join(", ")
            ),
        ),
        (
            "churn: meshd CPU".into(),
            format!("{:.2} cores", cpu / secs),
        ),
        (
            format!(
                "churn: responses to the {} proxies holding no churned service",
                outside.len()
            ),
            outside_answers.to_string(),
        ),
    ];
    if outside_answers > 0 {
        bail!(
            "endpoint churn: {outside_answers} responses went to proxies that hold none of the churned services"
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_covers_the_churned_namespaces_only() {
        let shape = Shape {
            services: 20,
            workloads: 20,
            namespaces: 5,
            sidecar_scoping: true,
        };
        let pool = Pool::new(&shape, 2);
        assert_eq!(pool.services, [0, 1, 5, 6, 10, 11, 15, 16]);
        assert_eq!(pool.service_of(1), 0);
        assert_eq!(pool.service_of(9), 0, "ids cycle through the pool");
        assert_eq!(Pool::new(&shape, 0).services.len(), 20);
    }
}
