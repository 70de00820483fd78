//! The CA as the xDS server sees it: who a stream is (its credential) and which secrets it gets
//! (a certificate for exactly that identity, rotated before it expires).

use dashmap::DashMap;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use meshd_ads::{Authenticator, SecretSource};
use meshd_ca::{CertFacts, CertificateAuthority, SpiffeId, WorkloadClaims};
use meshd_xds::generate::common::{ROOT_SECRET, WORKLOAD_SECRET, inline_bytes};
use meshd_xds::{Identity, Proxy, Resource, SharedResource};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

/// Streams prove identity with a bearer credential the control plane issued (file mode).
pub struct CredentialAuth {
    pub ca: Arc<CertificateAuthority>,
}

impl Authenticator for CredentialAuth {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, String> {
        let header = metadata
            .get("authorization")
            .ok_or("no credential: the stream carries no `authorization` metadata")?
            .to_str()
            .map_err(|_| "the `authorization` metadata is not text")?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or("the `authorization` metadata is not `Bearer <credential>`")?;
        let claims = self
            .ca
            .verify_credential(token)
            .map_err(|e| format!("credential rejected: {e}"))?;
        Ok(identity_of(&claims, self.ca.trust_domain()))
    }
}

pub fn identity_of(claims: &WorkloadClaims, trust_domain: &str) -> Identity {
    Identity {
        workload: claims.workload.clone(),
        namespace: claims.namespace.clone(),
        service_account: claims.service_account.clone(),
        trust_domain: trust_domain.to_string(),
    }
}

struct Issued {
    facts: CertFacts,
    /// The `default` secret, encoded once: the only copy of the chain and key kept.
    resource: SharedResource,
    /// When to re-issue: inside the rotation window, jittered so a mesh does not rotate at once.
    refresh_at: SystemTime,
}

/// What an identity holds: its certificate and how many streams it has open.
struct Held {
    issued: Option<Issued>,
    streams: usize,
    /// When its last stream ended (`None` while one is open).
    idle_since: Option<Instant>,
    /// One issuance at a time for this identity: a burst of its streams (a restart, a flood of
    /// node ids) waits for one key and signature. Held outside the map, so other identities —
    /// whichever shard they hash to — are signed meanwhile.
    issuing: Arc<Mutex<()>>,
}

impl Held {
    fn new(idle_since: Option<Instant>) -> Held {
        Held {
            issued: None,
            streams: 0,
            idle_since,
            issuing: Arc::default(),
        }
    }
}

/// How long an identity's certificate outlives its last stream. A proxy that reconnects (a
/// network blip, the server's max connection age, a rolling restart of a replica behind the
/// same address) gets the certificate it holds back instead of a fresh key and signature each
/// time; an identity gone for good stops costing memory after this.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(300);

/// Issues one certificate per authenticated identity (SPIFFE ID and workload), served only to
/// streams proving that same identity; never keyed by what a node calls itself.
pub struct CaSecrets {
    ca: Arc<CertificateAuthority>,
    held: DashMap<Identity, Held>,
    grace: Duration,
    next_sweep: Mutex<Instant>,
    /// The `ROOTCA` secret for the bundle it was built from.
    root: Mutex<Option<(String, SharedResource)>>,
    bundle: watch::Sender<u64>,
}

impl CaSecrets {
    /// Rotation follows the CA's `rotation_window` (see `CertificateAuthority::rotation_window_for`).
    pub fn new(ca: Arc<CertificateAuthority>) -> CaSecrets {
        Self::with_grace(ca, RECONNECT_GRACE)
    }

    /// As `new`, keeping an idle identity's certificate for `grace` after its last stream.
    pub fn with_grace(ca: Arc<CertificateAuthority>, grace: Duration) -> CaSecrets {
        CaSecrets {
            ca,
            held: DashMap::new(),
            grace,
            next_sweep: Mutex::new(Instant::now()),
            root: Mutex::new(None),
            bundle: watch::Sender::new(0),
        }
    }

    /// Tell every stream the trust bundle or the signer changed (root rotation): each
    /// recomputes its secrets, re-issuing certificates the current signer did not sign.
    pub fn bundle_changed(&self) {
        self.bundle.send_modify(|v| *v += 1);
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// The `ROOTCA` secret for the CA's current trust bundle.
    pub fn root_resource(&self) -> SharedResource {
        let bundle = self.ca.root_cert_pem();
        let mut cached = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((b, r)) = cached.as_ref()
            && *b == bundle
        {
            return r.clone();
        }
        let root = Secret {
            name: ROOT_SECRET.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline_bytes(bundle.as_bytes())),
                    ..Default::default()
                },
            )),
        };
        let r = Resource::encode(ROOT_SECRET, &root);
        *cached = Some((bundle, r.clone()));
        r
    }

    /// The certificate each identity with an open stream holds.
    pub fn served(&self) -> Vec<(Identity, CertFacts)> {
        self.held
            .iter()
            .filter(|e| e.streams > 0)
            .filter_map(|e| Some((e.key().clone(), e.issued.as_ref()?.facts.clone())))
            .collect()
    }

    /// Identities whose certificate is kept (open streams, or inside the reconnect grace).
    pub fn held_identities(&self) -> usize {
        self.held.len()
    }

    /// The version of the `default` secret last built for `identity`, and the serial of the
    /// CA certificate that signed it.
    pub fn workload_secret(&self, identity: &Identity) -> Option<(String, String)> {
        let h = self.held.get(identity)?;
        let i = h.issued.as_ref()?;
        Some((
            i.resource.version.clone(),
            i.facts.signer_serial.to_string(),
        ))
    }

    /// When to re-issue `cert`: once its remaining life drops below the CA's rotation window
    /// (min(--cert-rotation-window, lifetime / 2)), up to a tenth of that window earlier —
    /// derived from the serial, so stable per certificate but spread over a mesh — and never
    /// sooner than a second after issuance (no re-issue loop when the signer itself expires).
    fn refresh_time(&self, cert: &CertFacts) -> SystemTime {
        let window = self.ca.rotation_window_for(cert.validity);
        let spread = window / 10;
        let seed = u64::from_str_radix(
            &cert.serial_hex[cert.serial_hex.len().saturating_sub(8)..],
            16,
        )
        .unwrap_or(0);
        let jitter = if spread.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(seed % spread.as_nanos().max(1) as u64)
        };
        let at = cert.validity.not_after - window - jitter;
        at.max(SystemTime::now() + Duration::from_secs(1))
    }

    fn certificate(&self, proxy: &Proxy) -> Result<(CertFacts, SharedResource), String> {
        let now = SystemTime::now();
        let identity = &proxy.identity;
        let current = |h: &Held| {
            h.issued
                .as_ref()
                .filter(|i| i.refresh_at > now && *i.facts.signer_serial == self.ca.signer_serial())
                .map(|i| (i.facts.clone(), i.resource.clone()))
        };
        let cached = || self.held.get(identity).and_then(|h| current(&h));
        if let Some(found) = cached() {
            return Ok(found);
        }
        let issuing = (self.held.entry(identity.clone()))
            .or_insert_with(|| Held::new(Some(Instant::now())))
            .issuing
            .clone();
        let _one_at_a_time = issuing.lock().unwrap_or_else(|p| p.into_inner());
        // Another stream of this identity may have been issued one while this one waited.
        if let Some(found) = cached() {
            return Ok(found);
        }
        let id = SpiffeId::new(
            self.ca.trust_domain(),
            &identity.namespace,
            &identity.service_account,
        );
        let cert = self.ca.issue_workload(&id).map_err(|e| e.to_string())?;
        tracing::info!(proxy = %proxy.id, spiffe_id = %id, serial = %cert.serial_hex, "issued workload certificate");
        let facts = cert.facts();
        let refresh_at = self.refresh_time(&facts);
        let workload = Secret {
            name: WORKLOAD_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline_bytes(cert.cert_chain_pem.as_bytes())),
                private_key: Some(inline_bytes(cert.key_pem.as_bytes())),
                ..Default::default()
            })),
        };
        let resource = Resource::encode(WORKLOAD_SECRET, &workload);
        drop((workload, cert));
        // Replaces what the identity held: one certificate per identity, whatever its streams.
        let mut held =
            (self.held.entry(identity.clone())).or_insert_with(|| Held::new(Some(Instant::now())));
        held.issued = Some(Issued {
            facts: facts.clone(),
            resource: resource.clone(),
            refresh_at,
        });
        Ok((facts, resource))
    }

    /// Drops identities idle for longer than the grace, and expired certificates; at most a
    /// few times per grace period, so a reconnect storm does not scan the map per stream.
    fn sweep(&self) {
        let now = Instant::now();
        {
            let mut next = self.next_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if now < *next {
                return;
            }
            *next = now + self.grace / 4;
        }
        let wall = SystemTime::now();
        let grace = self.grace;
        self.held.retain(|_, h| {
            if h.issued
                .as_ref()
                .is_some_and(|i| i.facts.validity.not_after <= wall)
            {
                h.issued = None;
            }
            h.streams > 0 || h.idle_since.is_some_and(|t| now.duration_since(t) < grace)
        });
    }
}

impl SecretSource for CaSecrets {
    fn secrets(&self, proxy: &Proxy) -> Result<BTreeMap<String, SharedResource>, String> {
        let (_, workload) = self.certificate(proxy)?;
        Ok([
            (WORKLOAD_SECRET.to_string(), workload),
            (ROOT_SECRET.to_string(), self.root_resource()),
        ]
        .into_iter()
        .collect())
    }

    fn next_refresh(&self, proxy: &Proxy) -> Option<Instant> {
        let at = self.held.get(&proxy.identity)?.issued.as_ref()?.refresh_at;
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(Instant::now() + wait)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.bundle.subscribe()
    }

    fn acquire(&self, proxy: &Proxy) {
        let mut h = self
            .held
            .entry(proxy.identity.clone())
            .or_insert_with(|| Held::new(None));
        h.streams += 1;
        h.idle_since = None;
    }

    fn release(&self, proxy: &Proxy) {
        if let Some(mut h) = self.held.get_mut(&proxy.identity) {
            h.streams = h.streams.saturating_sub(1);
            if h.streams == 0 {
                h.idle_since = Some(Instant::now());
            }
        }
        self.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_ca::CaConfig;
    use meshd_xds::NodeType;

    fn proxy(name: &str) -> Proxy {
        Proxy {
            metadata: Default::default(),
            id: format!("sidecar~10.0.0.1~{name}.ns~ns.svc.cluster.local"),
            node_type: NodeType::Sidecar,
            ip: Some("10.0.0.1".into()),
            identity: Identity {
                workload: name.into(),
                namespace: "ns".into(),
                service_account: name.into(),
                trust_domain: "cluster.local".into(),
            },
        }
    }

    fn secrets(dir: &std::path::Path, ttl: u64, window: u64) -> CaSecrets {
        secrets_with_grace(dir, ttl, window, RECONNECT_GRACE)
    }

    fn secrets_with_grace(
        dir: &std::path::Path,
        ttl: u64,
        window: u64,
        grace: Duration,
    ) -> CaSecrets {
        let ca = CertificateAuthority::load_or_create(&CaConfig {
            state_dir: dir.to_path_buf(),
            workload_cert_ttl: Duration::from_secs(ttl),
            rotation_window: Duration::from_secs(window),
            ..CaConfig::default()
        })
        .unwrap();
        CaSecrets::with_grace(Arc::new(ca), grace)
    }

    /// Found by `identity_binding::ten_thousand_node_ids_from_one_identity_hold_one_certificate`
    /// in CI: streams of one identity that missed the cache at the same moment each issued a
    /// certificate (and a key) of their own. Now one issues, the others wait for it.
    #[test]
    fn streams_of_one_identity_arriving_at_once_share_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(secrets(dir.path(), 3600, 60));
        let start = Arc::new(std::sync::Barrier::new(16));
        let serials: std::collections::HashSet<Box<str>> = (0..16)
            .map(|_| {
                let (s, start) = (s.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    s.certificate(&proxy("a")).unwrap().0.serial_hex
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(serials.len(), 1, "{serials:?}");
        assert_eq!(
            s.ca.issued_totals()[0].1,
            1,
            "one workload certificate issued"
        );
    }

    #[test]
    fn an_identity_being_signed_holds_up_no_other_identity() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(secrets(dir.path(), 3600, 60));
        let slow = proxy("slow");
        // An issuance for `slow` in flight: its lock taken, as `certificate` holds it while
        // signing. Before, signing held the map's shard, so identities on that shard waited.
        let issuing = (s.held.entry(slow.identity.clone()))
            .or_insert_with(|| Held::new(None))
            .issuing
            .clone();
        let in_flight = issuing.lock().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let others = s.clone();
        std::thread::spawn(move || {
            // 64 identities cover every shard of the map, `slow`'s included.
            for i in 0..64 {
                others.certificate(&proxy(&format!("other-{i}"))).unwrap();
            }
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("other identities were signed while one identity's issuance was in flight");
        drop(in_flight);
        assert!(s.certificate(&slow).is_ok());
        assert_eq!(s.ca.issued_totals()[0].1, 65);
    }

    #[test]
    fn short_lived_certs_refresh_inside_the_window_not_at_once() {
        let dir = tempfile::tempdir().unwrap();
        for (ttl, window, want) in [(30, 10, 10), (30, 24 * 3600, 15), (3600, 60, 60)] {
            let s = secrets(dir.path(), ttl, window);
            let p = proxy("a");
            let (first, _) = s.certificate(&p).unwrap();
            // cached until the refresh time
            assert_eq!(s.certificate(&p).unwrap().0.serial_hex, first.serial_hex);
            let at = s
                .held
                .get(&p.identity)
                .unwrap()
                .issued
                .as_ref()
                .unwrap()
                .refresh_at;
            let before_expiry = first.validity.not_after.duration_since(at).unwrap();
            let want = Duration::from_secs(want);
            assert!(
                before_expiry >= want && before_expiry <= want + want / 10,
                "ttl {ttl}s window {window}s: refresh {before_expiry:?} before expiry"
            );
            let wake = s.next_refresh(&p).unwrap();
            assert!(wake > Instant::now() + Duration::from_secs(ttl - want.as_secs() * 2));
        }
    }

    #[test]
    fn due_certificate_is_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets(dir.path(), 30, 10);
        let p = proxy("a");
        let (first, _) = s.certificate(&p).unwrap();
        s.held
            .get_mut(&p.identity)
            .unwrap()
            .issued
            .as_mut()
            .unwrap()
            .refresh_at = SystemTime::now();
        let (second, _) = s.certificate(&p).unwrap();
        assert_ne!(first.serial_hex, second.serial_hex);
        // a new signer (root rotation) re-issues at once
        s.ca.begin_root_rotation().unwrap();
        assert_eq!(s.certificate(&p).unwrap().0.serial_hex, second.serial_hex);
        let root_before = s.root_resource();
        s.ca.advance_root_rotation().unwrap();
        let (third, res) = s.certificate(&p).unwrap();
        assert_ne!(third.serial_hex, second.serial_hex);
        assert_eq!(&*third.signer_serial, s.ca.signer_serial());
        assert_eq!(
            s.workload_secret(&p.identity),
            Some((res.version.clone(), third.signer_serial.to_string()))
        );
        assert_ne!(s.root_resource().version, root_before.version);
    }

    /// The chain and key PEM inside an encoded `default` secret.
    fn chain_and_key(secret: &Resource) -> (String, String) {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        use prost::Message;
        let decoded = Secret::decode(secret.value()).unwrap();
        let Some(secret::Type::TlsCertificate(tls)) = decoded.r#type else {
            panic!("not a TLS certificate secret: {decoded:?}");
        };
        let text = |d: Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
            .and_then(|d| d.specifier)
        {
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        };
        (text(tls.certificate_chain), text(tls.private_key))
    }

    /// The DER of a chain's first certificate.
    fn pem_der(chain: &str) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    /// The secret served for an identity holds a chain and a key of its own; what the cache
    /// keeps beside it is public (serial, validity, signer), never a second copy of the key.
    #[test]
    fn the_key_is_kept_once_inside_the_served_secret() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets(dir.path(), 3600, 60);
        let p = proxy("a");
        let (facts, secret) = s.certificate(&p).unwrap();
        let (chain, key) = chain_and_key(&secret);
        assert!(key.contains("PRIVATE KEY"), "{key}");
        assert!(!format!("{facts:?}").contains("PRIVATE KEY"));
        // the facts describe the certificate served
        let der = pem_der(&chain);
        let der_hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
        assert!(der_hex.contains(&*facts.serial_hex), "{facts:?}");
        assert!(std::sync::Arc::ptr_eq(
            &secret,
            &s.certificate(&p).unwrap().1
        ));
    }

    fn workload_certs_issued(s: &CaSecrets) -> u64 {
        s.ca.issued_totals()[0].1
    }

    #[test]
    fn a_certificate_goes_only_to_the_identity_it_was_issued_for() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets(dir.path(), 3600, 60);
        let billing = proxy("billing");
        // Another identity presenting billing's node id (what the audit did on main).
        let mut intruder = proxy("low-priv");
        intruder.id = billing.id.clone();
        s.acquire(&billing);
        s.acquire(&intruder);
        let (theirs, their_secret) = s.certificate(&billing).unwrap();
        let (mine, my_secret) = s.certificate(&intruder).unwrap();
        assert_ne!(mine.serial_hex, theirs.serial_hex);
        let (my_chain, my_key) = chain_and_key(&my_secret);
        let (their_chain, their_key) = chain_and_key(&their_secret);
        assert_ne!(my_key, their_key);
        let carries =
            |chain: &str, id: &str| pem_der(chain).windows(id.len()).any(|w| w == id.as_bytes());
        assert!(carries(
            &my_chain,
            "spiffe://cluster.local/ns/ns/sa/low-priv"
        ));
        assert!(!carries(
            &my_chain,
            "spiffe://cluster.local/ns/ns/sa/billing"
        ));
        assert!(carries(
            &their_chain,
            "spiffe://cluster.local/ns/ns/sa/billing"
        ));
        // billing still gets its own, unchanged
        assert_eq!(
            s.certificate(&billing).unwrap().0.serial_hex,
            theirs.serial_hex
        );
    }

    #[test]
    fn ten_thousand_node_ids_of_one_identity_hold_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets_with_grace(dir.path(), 3600, 60, Duration::ZERO);
        let base = proxy("billing");
        let mut first = None;
        for i in 0..10_000 {
            let mut p = base.clone();
            p.id = format!("sidecar~10.0.0.1~billing.ns~ns.svc.flood{i}.local");
            s.acquire(&p);
            let (cert, _) = s.certificate(&p).unwrap();
            let serial = first.get_or_insert(cert.serial_hex.clone());
            assert_eq!(
                &cert.serial_hex, serial,
                "node id {i} got a new certificate"
            );
            assert_eq!(s.held_identities(), 1, "node id {i}");
        }
        assert_eq!(workload_certs_issued(&s), 1);
        for i in 0..10_000 {
            let mut p = base.clone();
            p.id = format!("sidecar~10.0.0.1~billing.ns~ns.svc.flood{i}.local");
            s.release(&p);
        }
        // the last stream ended and the grace (zero here) passed: nothing is kept
        assert_eq!(s.held_identities(), 0);
        assert!(s.workload_secret(&base.identity).is_none());
    }

    #[test]
    fn a_reconnect_inside_the_grace_keeps_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets(dir.path(), 3600, 60);
        let p = proxy("a");
        s.acquire(&p);
        let (first, _) = s.certificate(&p).unwrap();
        s.release(&p);
        assert_eq!(s.held_identities(), 1, "kept for the grace");
        assert!(s.served().is_empty(), "but not served: no stream is open");
        s.acquire(&p);
        assert_eq!(s.certificate(&p).unwrap().0.serial_hex, first.serial_hex);
        assert_eq!(workload_certs_issued(&s), 1);
        assert_eq!(s.served().len(), 1);
    }

    #[test]
    fn an_identity_stays_while_any_of_its_streams_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets_with_grace(dir.path(), 3600, 60, Duration::ZERO);
        let p = proxy("a");
        s.acquire(&p);
        s.acquire(&p);
        let (first, _) = s.certificate(&p).unwrap();
        s.release(&p);
        assert_eq!(s.certificate(&p).unwrap().0.serial_hex, first.serial_hex);
        s.release(&p);
        assert_eq!(s.held_identities(), 0);
    }
}
