//! The record of issued leaves (bounded, expired ones pruned) behind `/debug/certs` and the CA's
//! metrics: counts and earliest expiry by kind, and certificates signed since start.

use std::time::{Duration, SystemTime};

use crate::x509::rfc3339;
use crate::{CertInfo, CertificateAuthority};

/// What an issued leaf is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Workload = 0,
    Server = 1,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::Server => "server",
        }
    }
}

pub(crate) struct RegEntry {
    pub(crate) spiffe_id: String,
    pub(crate) kind: Kind,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// Most leaf certificates the CA keeps a record of (`/debug/certs`, `/metrics`): past it the
/// oldest records go first, counted in [`IssuedSummary::untracked`].
pub const MAX_TRACKED_LEAVES: usize = 50_000;

/// Leaves still valid, in issuance order, bounded.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) certs: std::collections::VecDeque<(String, RegEntry)>,
    pub(crate) next_prune: Option<SystemTime>,
    /// Records dropped by the cap while their certificate was still valid.
    pub(crate) untracked: u64,
}

impl Registry {
    pub(crate) fn prune(&mut self, now: SystemTime) {
        self.certs.retain(|(_, e)| e.not_after > now);
        self.next_prune = Some(now + Duration::from_secs(60));
    }

    pub(crate) fn insert(&mut self, serial: String, entry: RegEntry, cap: usize) {
        self.certs.push_back((serial, entry));
        while self.certs.len() > cap.max(1) {
            self.certs.pop_front();
            self.untracked += 1;
        }
    }
}

/// Certificates of one kind still valid, for bounded metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindSummary {
    /// `root` | `intermediate` | `workload` | `server`.
    pub kind: &'static str,
    pub count: u64,
    /// The earliest NotAfter among them.
    pub earliest_expiry: Option<SystemTime>,
}

/// What [`CertificateAuthority::issued_summary`] reports.
#[derive(Clone, Debug)]
pub struct IssuedSummary {
    pub kinds: Vec<KindSummary>,
    /// Valid leaves whose record the cap ([`MAX_TRACKED_LEAVES`]) dropped.
    pub untracked: u64,
}

impl CertificateAuthority {
    /// Certificates signed since start, by kind: `[("workload", n), ("server", m)]`
    /// (workload includes CSR-signed ones).
    pub fn issued_totals(&self) -> [(&'static str, u64); 2] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            (Kind::Workload.as_str(), self.issued_total[0].load(Relaxed)),
            (Kind::Server.as_str(), self.issued_total[1].load(Relaxed)),
        ]
    }

    /// The CA certificates (roots, intermediates) and every issued certificate still valid.
    pub fn issued(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let mut out = self.state().ca_infos.clone();
        let mut leaves: Vec<(SystemTime, CertInfo)> = {
            let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            reg.prune(now);
            reg.certs
                .iter()
                .map(|(serial, e)| {
                    (
                        e.not_before,
                        CertInfo {
                            spiffe_id: e.spiffe_id.clone(),
                            serial: serial.clone(),
                            not_before: rfc3339(e.not_before),
                            not_after: rfc3339(e.not_after),
                            kind: e.kind.as_str().to_string(),
                        },
                    )
                })
                .collect()
        };
        leaves.sort_by(|a, b| {
            (a.0, &a.1.spiffe_id, &a.1.serial).cmp(&(b.0, &b.1.spiffe_id, &b.1.serial))
        });
        out.extend(leaves.into_iter().map(|(_, i)| i));
        out
    }

    /// Counts and earliest expiry by kind of the CA certificates and the tracked leaves
    /// still valid: what `/metrics` reports, with no per-certificate series.
    pub fn issued_summary(&self) -> IssuedSummary {
        let now = SystemTime::now();
        let mut kinds: Vec<KindSummary> = ["root", "intermediate", "workload", "server"]
            .into_iter()
            .map(|kind| KindSummary {
                kind,
                count: 0,
                earliest_expiry: None,
            })
            .collect();
        let mut add = |kind: &str, not_after: SystemTime| {
            if let Some(k) = kinds.iter_mut().find(|k| k.kind == kind) {
                k.count += 1;
                k.earliest_expiry = Some(k.earliest_expiry.map_or(not_after, |t| t.min(not_after)));
            }
        };
        for info in &self.state().ca_infos {
            if let Ok(t) = time::OffsetDateTime::parse(
                &info.not_after,
                &time::format_description::well_known::Rfc3339,
            ) {
                add(&info.kind, t.into());
            }
        }
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.prune(now);
        for (_, e) in &reg.certs {
            add(e.kind.as_str(), e.not_after);
        }
        IssuedSummary {
            kinds,
            untracked: reg.untracked,
        }
    }

    /// Lowers (or raises) how many leaf records are kept ([`MAX_TRACKED_LEAVES`] by default).
    pub fn set_tracking_cap(&self, cap: usize) {
        self.registry_cap
            .store(cap, std::sync::atomic::Ordering::Relaxed);
    }
}
