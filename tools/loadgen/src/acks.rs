//! What the simulated proxies answered, as the phases read it: the latest ACK per proxy and
//! type, how many answers each gave, and (endpoint churn) when each first held a churned
//! endpoint at least as new as a given change.

use crate::client::Ack;
use anyhow::bail;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The latest ACK time per proxy and type.
pub struct Acks {
    rx: mpsc::UnboundedReceiver<Ack>,
    last: Vec<[Option<Instant>; 5]>,
    /// Answers (ACKs and NACKs) per proxy and type.
    pub answers: Vec<[u64; 5]>,
    /// Per proxy, each time its newest churned endpoint id rose: (when, that id).
    pub churn: Vec<Vec<(Instant, u32)>>,
}

impl Acks {
    pub fn new(rx: mpsc::UnboundedReceiver<Ack>, proxies: usize) -> Acks {
        Acks {
            rx,
            last: vec![[None; 5]; proxies],
            answers: vec![[0; 5]; proxies],
            churn: vec![Vec::new(); proxies],
        }
    }

    pub fn drain(&mut self) {
        while let Ok(a) = self.rx.try_recv() {
            let p = a.proxy as usize;
            self.last[p][a.type_index] = Some(a.at);
            self.answers[p][a.type_index] += 1;
            let log = &mut self.churn[p];
            if a.churn > log.last().map_or(0, |l| l.1) {
                log.push((a.at, a.churn));
            }
        }
    }

    /// When proxy `p` first answered a response holding churned endpoint `id` or a newer one.
    pub fn churn_seen(&self, p: usize, id: u32) -> Option<Instant> {
        let log = &self.churn[p];
        let i = log.partition_point(|l| l.1 < id);
        log.get(i).map(|l| l.0)
    }

    /// Waits until every proxy ACKed each of `types` after `since`; returns the per-proxy
    /// latency (max over types) or an error naming how many are missing.
    pub async fn all_after(
        &mut self,
        since: Instant,
        types: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let deadline = since + timeout;
        loop {
            self.drain();
            let done: Vec<Option<Duration>> = self
                .last
                .iter()
                .map(|p| {
                    types
                        .iter()
                        .map(|t| p[*t].filter(|at| *at >= since).map(|at| at - since))
                        .try_fold(Duration::ZERO, |m, d| d.map(|d| m.max(d)))
                })
                .collect();
            let missing = done.iter().filter(|d| d.is_none()).count();
            if missing == 0 {
                let mut v: Vec<Duration> = done.into_iter().flatten().collect();
                v.sort();
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "{missing} of {} proxies did not ACK in {timeout:?}",
                    self.last.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the proxies a change reaches to ACK `type_index` after `since`. With
    /// `expected` (the change reaches every proxy), fewer than that many by the timeout is an
    /// error; without it (the count is not known here), until the ACKs stop for `quiet`, and
    /// none at all by the timeout is an error.
    pub async fn settle(
        &mut self,
        since: Instant,
        type_index: usize,
        expected: Option<usize>,
        quiet: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let deadline = since + timeout;
        let mut last_count = usize::MAX;
        let mut last_change = Instant::now();
        loop {
            self.drain();
            let mut v: Vec<Duration> = self
                .last
                .iter()
                .filter_map(|p| p[type_index].filter(|at| *at >= since).map(|at| at - since))
                .collect();
            let done = match expected {
                Some(n) => v.len() >= n,
                None => !v.is_empty() && v.len() == last_count && last_change.elapsed() > quiet,
            };
            if v.len() != last_count {
                last_count = v.len();
                last_change = Instant::now();
            }
            if done {
                v.sort();
                return Ok(v);
            }
            if Instant::now() > deadline {
                match expected {
                    Some(n) => bail!(
                        "{} of {n} proxies did not ACK the change in {timeout:?}",
                        n - v.len()
                    ),
                    None => bail!("no proxy ACKed the change in {timeout:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
