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
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

/// Streams prove identity with a bearer credential the control plane issued (file mode).
pub struct CredentialAuth {
    pub ca: Arc<CertificateAuthority>,
}

impl Authenticator for CredentialAuth {
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, String> {
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
    /// When to re-issue: inside the rotation window, jittered so a mesh does not rotate at once.
    refresh_at: SystemTime,
}

/// Issues one certificate per connected proxy, for its proven identity only.
pub struct CaSecrets {
    ca: Arc<CertificateAuthority>,
    rotation_window: Duration,
    issued: DashMap<String, Issued>,
    bundle: watch::Sender<u64>,
}

impl CaSecrets {
    pub fn new(ca: Arc<CertificateAuthority>, rotation_window: Duration) -> CaSecrets {
        CaSecrets {
            ca,
            rotation_window,
            issued: DashMap::new(),
            bundle: watch::Sender::new(0),
        }
    }

    /// Tell every stream the trust bundle changed (root rotation).
    pub fn bundle_changed(&self) {
        self.bundle.send_modify(|v| *v += 1);
    }

    fn refresh_time(&self, cert: &IssuedCert) -> SystemTime {
        let lifetime = cert
            .not_after
            .duration_since(cert.not_before)
            .unwrap_or_default();
        let window = self.rotation_window.min(lifetime / 2);
        // Up to a tenth of the window earlier, derived from the serial so it is stable per cert.
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
        cert.not_after - window - jitter
    }

    fn certificate(&self, proxy: &Proxy) -> Result<IssuedCert, String> {
        let now = SystemTime::now();
        if let Some(i) = self.issued.get(&proxy.id)
            && i.refresh_at > now
        {
            return Ok(i.cert.clone());
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
        self.issued.insert(
            proxy.id.clone(),
            Issued {
                cert: cert.clone(),
                refresh_at,
            },
        );
        Ok(cert)
    }
}

impl SecretSource for CaSecrets {
    fn secrets(&self, proxy: &Proxy) -> Result<BTreeMap<String, SharedResource>, String> {
        let cert = self.certificate(proxy)?;
        let workload = Secret {
            name: WORKLOAD_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline_bytes(cert.cert_chain_pem.as_bytes())),
                private_key: Some(inline_bytes(cert.key_pem.as_bytes())),
                ..Default::default()
            })),
        };
        let root = Secret {
            name: ROOT_SECRET.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline_bytes(self.ca.root_cert_pem().as_bytes())),
                    ..Default::default()
                },
            )),
        };
        Ok([
            (
                WORKLOAD_SECRET.to_string(),
                Resource::encode(WORKLOAD_SECRET, &workload),
            ),
            (
                ROOT_SECRET.to_string(),
                Resource::encode(ROOT_SECRET, &root),
            ),
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
