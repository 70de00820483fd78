//! Leader election over a `coordination.k8s.io/v1` Lease (client-go's algorithm, small): the
//! holder renews every `renew_every`; another replica takes over only after it has seen the
//! lease record unchanged for a whole `lease_duration` by its own clock (no clock-skew trust),
//! and every write is a compare-and-swap on the Lease's resourceVersion, so two replicas never
//! both believe they hold it. The leader releases the Lease when it stops.
//!
//! What the leader does in meshd: create the CA Secret once (`ca_secret`) and publish the root
//! certificate ConfigMaps (`root_cert`). RBAC: get/create/update on `leases` in meshd's namespace.

use ::kube::api::{Api, ObjectMeta, PostParams};
use ::kube::{Client, Error};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's holder identity (unique per process).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// `<pod or host name>_<random>`: unique even for two instances in one process.
pub fn default_identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "meshd".into());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{host}_{:016x}", h.finish())
}

/// The part of a Lease that changes when its holder renews.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew: Option<Timestamp>,
    transitions: i32,
}

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        renew: spec.renew_time.map(|t| t.0),
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record seen and when (our clock) it was first seen.
    observed: Option<(Record, Instant)>,
}

fn conflict(e: &Error) -> bool {
    matches!(e, Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    fn spec(&self, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: acquire or renew. `Ok(true)` when this replica holds the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rec = record(&lease);
        let seen_at = match &self.observed {
            Some((r, at)) if *r == rec => *at,
            _ => Instant::now(),
        };
        self.observed = Some((rec.clone(), seen_at));
        let mine = rec.holder.as_deref() == Some(self.cfg.identity.as_str());
        let duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.cfg.lease_duration);
        let free = rec.holder.is_none() || seen_at.elapsed() >= duration;
        if !mine && !free {
            return Ok(false);
        }
        let old = lease.spec.clone().unwrap_or_default();
        lease.spec = Some(if mine {
            self.spec(now, old.acquire_time, rec.transitions)
        } else {
            self.spec(now, None, rec.transitions + 1)
        });
        // `replace` carries metadata.resourceVersion: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.observed = Some((record(&l), Instant::now()));
                if !mine {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                }
                Ok(true)
            }
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (if held) so another replica takes over at once.
    pub async fn release(&mut self) -> Result<(), Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        if record(&lease).holder.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) | Err(Error::Api(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs the election until `stop` turns true, publishing whether this replica leads.
    /// Leadership is given up when a renewal has not succeeded for a whole lease duration.
    pub async fn run(mut self, leader: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut last_ok: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_ok = Some(Instant::now());
                    leader.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(false) => {
                    last_ok = None;
                    if leader.send_if_modified(|l| std::mem::replace(l, false)) {
                        tracing::warn!(lease = %self.cfg.name, "lost leadership");
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.cfg.name, error = %e, "lease renewal failed");
                    // Step down before another replica may take over (renew deadline).
                    let deadline = self.cfg.lease_duration.saturating_sub(self.cfg.renew_every);
                    if last_ok.is_none_or(|t| t.elapsed() >= deadline)
                        && leader.send_if_modified(|l| std::mem::replace(l, false))
                    {
                        tracing::warn!(lease = %self.cfg.name, "stepped down: cannot renew");
                    }
                }
            }
            let wait = if *leader.borrow() {
                self.cfg.renew_every
            } else {
                // Candidates poll a little faster than the holder renews.
                (self.cfg.renew_every / 2).max(Duration::from_millis(200))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(lease = %self.cfg.name, error = %e, "could not release the lease");
            }
        }
    }
}
