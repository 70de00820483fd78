//! The CA as the xDS server sees it: who a stream is (its credential) and which secrets it gets
//! (a certificate for exactly that identity, rotated before it expires).

use dashmap::DashMap;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use meshd_ca::{CertificateAuthority, IssuedCert, WorkloadClaims};
use meshd_xds::generate::common::{ROOT_SECRET, WORKLOAD_SECRET, inline_bytes};
use meshd_xds::server::{Authenticator, SecretSource};
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
    cert: IssuedCert,
    /// The `default` secret carrying it, encoded once.
    resource: SharedResource,
    /// When to re-issue: inside the rotation window, jittered so a mesh does not rotate at once.
    refresh_at: SystemTime,
}

/// Issues one certificate per connected proxy, for its proven identity only.
pub struct CaSecrets {
    ca: Arc<CertificateAuthority>,
    issued: DashMap<String, Issued>,
    /// The `ROOTCA` secret for the bundle it was built from.
    root: Mutex<Option<(String, SharedResource)>>,
    bundle: watch::Sender<u64>,
}

impl CaSecrets {
    /// Rotation follows the CA's `rotation_window` (see `CertificateAuthority::rotation_window_for`).
    pub fn new(ca: Arc<CertificateAuthority>) -> CaSecrets {
        CaSecrets {
            ca,
            issued: DashMap::new(),
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

    /// The certificate each proxy was last given, by proxy id.
    pub fn served(&self) -> Vec<(String, IssuedCert)> {
        self.issued
            .iter()
            .map(|e| (e.key().clone(), e.value().cert.clone()))
            .collect()
    }

    /// The version of the `default` secret last built for `proxy_id`, and the serial of the CA
    /// certificate that signed it.
    pub fn workload_secret(&self, proxy_id: &str) -> Option<(String, String)> {
        self.issued
            .get(proxy_id)
            .map(|i| (i.resource.version.clone(), i.cert.signer_serial.clone()))
    }

    /// When to re-issue `cert`: once its remaining life drops below the CA's rotation window
    /// (min(--cert-rotation-window, lifetime / 2)), up to a tenth of that window earlier —
    /// derived from the serial, so stable per certificate but spread over a mesh — and never
    /// sooner than a second after issuance (no re-issue loop when the signer itself expires).
    fn refresh_time(&self, cert: &IssuedCert) -> SystemTime {
        let window = self.ca.rotation_window_for(cert);
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
        let at = cert.not_after - window - jitter;
        at.max(SystemTime::now() + Duration::from_secs(1))
    }

    fn certificate(&self, proxy: &Proxy) -> Result<(IssuedCert, SharedResource), String> {
        let now = SystemTime::now();
        if let Some(i) = self.issued.get(&proxy.id)
            && i.refresh_at > now
            && i.cert.signer_serial == self.ca.signer_serial()
        {
            return Ok((i.cert.clone(), i.resource.clone()));
        }
        let claims = WorkloadClaims {
            workload: proxy.identity.workload.clone(),
            namespace: proxy.identity.namespace.clone(),
            service_account: proxy.identity.service_account.clone(),
            issued_at: 0,
        };
        let id = claims.spiffe_id(self.ca.trust_domain());
        let cert = self.ca.issue_workload(&id).map_err(|e| e.to_string())?;
        tracing::info!(proxy = %proxy.id, spiffe_id = %id, serial = %cert.serial_hex, "issued workload certificate");
        let refresh_at = self.refresh_time(&cert);
        let workload = Secret {
            name: WORKLOAD_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline_bytes(cert.cert_chain_pem.as_bytes())),
                private_key: Some(inline_bytes(cert.key_pem.as_bytes())),
                ..Default::default()
            })),
        };
        let resource = Resource::encode(WORKLOAD_SECRET, &workload);
        self.issued.insert(
            proxy.id.clone(),
            Issued {
                cert: cert.clone(),
                resource: resource.clone(),
                refresh_at,
            },
        );
        Ok((cert, resource))
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
        let at = self.issued.get(&proxy.id)?.refresh_at;
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(Instant::now() + wait)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.bundle.subscribe()
    }

    /// Certificates outlive streams, so a reconnecting proxy (a control-plane restart, a
    /// reconnect storm) gets its certificate back instead of a fresh issuance; expired ones go.
    fn release(&self, _proxy: &Proxy) {
        let now = SystemTime::now();
        self.issued.retain(|_, i| i.cert.not_after > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_ca::CaConfig;
    use meshd_xds::NodeType;

    fn proxy(name: &str) -> Proxy {
        Proxy {
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
        let ca = CertificateAuthority::load_or_create(&CaConfig {
            state_dir: dir.to_path_buf(),
            workload_cert_ttl: Duration::from_secs(ttl),
            rotation_window: Duration::from_secs(window),
            ..CaConfig::default()
        })
        .unwrap();
        CaSecrets::new(Arc::new(ca))
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
            let at = s.issued.get(&p.id).unwrap().refresh_at;
            let before_expiry = first.not_after.duration_since(at).unwrap();
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
        s.issued.get_mut(&p.id).unwrap().refresh_at = SystemTime::now();
        let (second, _) = s.certificate(&p).unwrap();
        assert_ne!(first.serial_hex, second.serial_hex);
        // a new signer (root rotation) re-issues at once
        s.ca.begin_root_rotation().unwrap();
        assert_eq!(s.certificate(&p).unwrap().0.serial_hex, second.serial_hex);
        let root_before = s.root_resource();
        s.ca.advance_root_rotation().unwrap();
        let (third, res) = s.certificate(&p).unwrap();
        assert_ne!(third.serial_hex, second.serial_hex);
        assert_eq!(third.signer_serial, s.ca.signer_serial());
        assert_eq!(
            s.workload_secret(&p.id),
            Some((res.version.clone(), third.signer_serial.clone()))
        );
        assert_ne!(s.root_resource().version, root_before.version);
    }
}
