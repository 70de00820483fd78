//! CreateCertificate callers as a root rotation sees them: the latest certificate each caller
//! holds and the roots it was told to trust with it. Bounded; expired certificates drop out.
//!
//! Proxies served over SDS get each phase of a root rotation pushed; a CreateCertificate caller
//! only learns a new bundle or signer when it next renews. So the rotation counts it synced with
//! a phase only once its latest certificate says so (see [`CsrLedger::behind`]), and a
//! certificate it still holds is never invalidated unaccounted: it is renewed, or it expires.

use std::collections::HashMap;
use std::time::SystemTime;

/// Most CreateCertificate callers tracked; past it the one whose certificate expires first is
/// forgotten (and counted).
pub const MAX_CSR_HOLDERS: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrHolding {
    /// `spiffe://…` of the certificate.
    pub spiffe_id: String,
    /// Who asked: the caller's workload (`NAME.NAMESPACE`), as its credential proved it.
    pub holder: String,
    pub serial: String,
    pub not_after: SystemTime,
    /// Serial of the CA certificate that signed it.
    pub signer_serial: String,
    /// Serials of the roots in the bundle returned with it.
    pub trusted_roots: Vec<String>,
}

/// What a root rotation phase needs every caller to hold before it moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseNeed<'a> {
    /// Leaving add-root: the new root must be in the caller's bundle.
    Trusts(&'a str),
    /// Leaving switch-signer: the caller's certificate must come from this signer.
    SignedBy(&'a str),
}

#[derive(Default)]
pub(crate) struct CsrLedger {
    holdings: HashMap<(String, String), CsrHolding>,
    /// Callers forgotten because of the cap while their certificate was valid.
    pub(crate) untracked: u64,
}

impl CsrLedger {
    pub(crate) fn record(&mut self, h: CsrHolding, cap: usize, now: SystemTime) {
        let key = (h.spiffe_id.clone(), h.holder.clone());
        if !self.holdings.contains_key(&key) && self.holdings.len() >= cap.max(1) {
            self.holdings.retain(|_, h| h.not_after > now);
            if self.holdings.len() >= cap.max(1)
                && let Some(first) = self
                    .holdings
                    .iter()
                    .min_by_key(|(_, h)| h.not_after)
                    .map(|(k, _)| k.clone())
            {
                self.holdings.remove(&first);
                self.untracked += 1;
            }
        }
        self.holdings.insert(key, h);
    }

    /// Callers whose valid certificate does not meet `need`, as `csr:<holder> <spiffe-id>
    /// (serial …)`, sorted.
    pub(crate) fn behind(&mut self, need: PhaseNeed<'_>, now: SystemTime) -> Vec<String> {
        self.holdings.retain(|_, h| h.not_after > now);
        let mut out: Vec<String> = self
            .holdings
            .values()
            .filter(|h| match need {
                PhaseNeed::Trusts(root) => !h.trusted_roots.iter().any(|r| r == root),
                PhaseNeed::SignedBy(signer) => h.signer_serial != signer,
            })
            .map(|h| format!("csr:{} {} (serial {})", h.holder, h.spiffe_id, h.serial))
            .collect();
        out.sort();
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.holdings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn holding(holder: &str, signer: &str, roots: &[&str], life: u64) -> CsrHolding {
        CsrHolding {
            spiffe_id: "spiffe://cluster.local/ns/n/sa/s".into(),
            holder: holder.into(),
            serial: format!("{holder}-{signer}"),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(life),
            signer_serial: signer.into(),
            trusted_roots: roots.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn callers_are_behind_until_they_renew_or_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let mut l = CsrLedger::default();
        l.record(holding("a.n", "old", &["old"], 1000), 10, now);
        l.record(holding("b.n", "old", &["old"], 150), 10, now);
        assert_eq!(l.behind(PhaseNeed::Trusts("new"), now).len(), 2);
        // a renews during add-root: trusts both, still signed by the old root
        l.record(holding("a.n", "old", &["old", "new"], 1000), 10, now);
        assert_eq!(
            l.behind(PhaseNeed::Trusts("new"), now),
            vec!["csr:b.n spiffe://cluster.local/ns/n/sa/s (serial b.n-old)"]
        );
        // b's certificate expires: nothing left to invalidate
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(200);
        assert!(l.behind(PhaseNeed::Trusts("new"), later).is_empty());
        assert_eq!(l.behind(PhaseNeed::SignedBy("new"), later).len(), 1);
        l.record(holding("a.n", "new", &["new", "old"], 1000), 10, later);
        assert!(l.behind(PhaseNeed::SignedBy("new"), later).is_empty());
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn the_ledger_is_bounded() {
        let now = SystemTime::UNIX_EPOCH;
        let mut l = CsrLedger::default();
        for i in 0..100u64 {
            l.record(holding(&format!("w{i}.n"), "s", &["s"], 1000 + i), 10, now);
        }
        assert_eq!(l.len(), 10);
        assert_eq!(l.untracked, 90);
        // the ones expiring first went first
        assert!(
            l.behind(PhaseNeed::SignedBy("x"), now)
                .iter()
                .all(|w| w.contains("w9"))
        );
    }
}
