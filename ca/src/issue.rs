//! Issuance: workload X509-SVIDs with a fresh key, CSRs signed for an authenticated identity,
//! meshd's own server certificates, when a certificate is due for rotation, and the file-mode
//! workload credentials.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use x509_parser::prelude::FromDer;

use crate::registry::{Kind, RegEntry};
use crate::x509::{RawP256Public, pem_encode, random_serial, rfc3339, whole_seconds};
use crate::{
    BACKDATE, CaError, CertificateAuthority, CsrHolding, IssuedCert, MAX_CSR_HOLDERS, SigningState,
    SpiffeId, Validity, WorkloadClaims, credential,
};

/// What a leaf is for, besides its key.
pub(crate) struct Leaf {
    pub(crate) sans: Vec<SanType>,
    pub(crate) kind: Kind,
    /// SPIFFE ID recorded in the issued registry (`""` for server certificates).
    pub(crate) registry_id: String,
    pub(crate) ttl: Duration,
    /// RSA subject key: keyEncipherment too.
    pub(crate) rsa: bool,
}

impl CertificateAuthority {
    fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        id.validate()?;
        if id.trust_domain != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                expected: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    /// Signs a leaf for `public_key`. Returns (DER, serial hex, not_before, not_after).
    fn sign_leaf(
        &self,
        state: &SigningState,
        public_key: &impl PublicKeyData,
        leaf: Leaf,
    ) -> Result<(rcgen::Certificate, String, SystemTime, SystemTime), CaError> {
        let Leaf {
            sans,
            kind,
            registry_id,
            ttl,
            rsa,
        } = leaf;
        let signer = &state.signer;
        let now = whole_seconds(SystemTime::now());
        if signer.not_after <= now {
            return Err(CaError::SignerExpired {
                not_after: rfc3339(signer.not_after),
            });
        }
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(signer.not_after);
        let serial = random_serial(&self.rng)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new(); // empty subject, critical SAN
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(public_key, &signer.issuer)
            .map_err(|e| CaError::Generate {
                what: "signing a leaf certificate",
                source: e,
            })?;
        let serial_hex = hex::encode(serial);
        self.issued_total[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            if reg.next_prune.is_none_or(|t| now >= t) {
                reg.prune(now);
            }
            reg.insert(
                serial_hex.clone(),
                RegEntry {
                    spiffe_id: registry_id,
                    kind,
                    not_before,
                    not_after,
                },
                self.registry_cap.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        Ok((cert, serial_hex, not_before, not_after))
    }

    /// A fresh ECDSA P-256 key and a leaf for it.
    fn issue_with_new_key(
        &self,
        spiffe_id: Option<SpiffeId>,
        sans: Vec<SanType>,
        kind: Kind,
        registry_id: String,
    ) -> Result<IssuedCert, CaError> {
        let state = self.state();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
            .map_err(|_| CaError::Rng {
                what: "generating a workload key",
            })?;
        let pkcs8 = doc.as_ref();
        // ring's P-256 PKCS#8 ends with the uncompressed public point (0x04 || X || Y).
        let point = &pkcs8[pkcs8.len().saturating_sub(65)..];
        let owned;
        let public: &[u8] = if point.len() == 65 && point[0] == 0x04 {
            point
        } else {
            let kp = KeyPair::try_from(pkcs8).map_err(|e| CaError::Generate {
                what: "parsing a generated workload key",
                source: e,
            })?;
            owned = kp.public_key_raw().to_vec();
            &owned
        };
        let (cert, serial_hex, not_before, not_after) = self.sign_leaf(
            &state,
            &RawP256Public(public),
            Leaf {
                sans,
                kind,
                registry_id,
                ttl: self.workload_ttl,
                rsa: false,
            },
        )?;
        let leaf = pem_encode("CERTIFICATE", cert.der());
        let tail = &state.signer.chain_tail_joined;
        let mut cert_chain_pem = String::with_capacity(leaf.len() + tail.len());
        cert_chain_pem.push_str(&leaf);
        cert_chain_pem.push_str(tail);
        Ok(IssuedCert {
            spiffe_id,
            cert_chain_pem,
            key_pem: pem_encode("PRIVATE KEY", pkcs8),
            serial_hex,
            not_before,
            not_after,
            signer_serial: state.signer.serial_hex.clone(),
        })
    }

    /// A fresh ECDSA P-256 key and an X509-SVID for `id`, valid for `workload_cert_ttl`
    /// (clamped to the signer's expiry).
    pub fn issue_workload(&self, id: &SpiffeId) -> Result<IssuedCert, CaError> {
        self.check_id(id)?;
        let uri = id.to_string();
        let san = SanType::URI(uri.clone().try_into().map_err(|e| CaError::Generate {
            what: "encoding the URI SAN",
            source: e,
        })?);
        self.issue_with_new_key(Some(id.clone()), vec![san], Kind::Workload, uri)
    }

    /// Signs a PEM CSR for `id`. The SAN comes from `id` only; everything the CSR asks for
    /// besides its public key is ignored. Returns the chain, leaf first.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        self.sign_csr_recorded(csr_pem, id, ttl)
            .map(|(chain, _)| chain)
    }

    /// As [`sign_csr`](Self::sign_csr), also returning what was signed (for the ledger).
    fn sign_csr_recorded(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<(Vec<String>, CsrHolding), CaError> {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::public_key::PublicKey;

        self.check_id(id)?;
        let ttl = match ttl {
            Some(t) if t.is_zero() => return Err(CaError::TtlZero),
            Some(t) if t > self.workload_ttl => {
                return Err(CaError::TtlTooLong {
                    requested: t,
                    max: self.workload_ttl,
                });
            }
            Some(t) => t,
            None => self.workload_ttl,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|e| {
            CaError::CsrParse {
                reason: format!("not PEM: {e}"),
            }
        })?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(CaError::CsrParse {
                reason: format!("PEM block is {:?}, want CERTIFICATE REQUEST", pem.label),
            });
        }
        let (_, csr) =
            X509CertificationRequest::from_der(&pem.contents).map_err(|e| CaError::CsrParse {
                reason: format!("not a PKCS#10 request: {e}"),
            })?;
        let spki = &csr.certification_request_info.subject_pki;
        let rsa = match spki.parsed() {
            Ok(PublicKey::RSA(k)) => {
                let bits = k.key_size();
                if bits < 2048 {
                    return Err(CaError::CsrWeakKey { bits });
                }
                true
            }
            Ok(PublicKey::EC(_)) => false,
            Ok(other) => {
                let what = match other {
                    PublicKey::DSA(_) => "DSA",
                    PublicKey::GostR3410(_) | PublicKey::GostR3410_2012(_) => "GOST R 34.10",
                    _ => "unknown algorithm",
                };
                return Err(CaError::CsrUnsupportedKey {
                    reason: format!("{what} key"),
                });
            }
            Err(e) => {
                return Err(CaError::CsrUnsupportedKey {
                    reason: format!("unparsable public key: {e}"),
                });
            }
        };
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| {
            CaError::CsrUnsupportedKey {
                reason: format!("{e} (supported: ECDSA P-256/P-384, Ed25519, RSA >= 2048)"),
            }
        })?;
        let uri = id.to_string();
        let san = SanType::URI(uri.clone().try_into().map_err(|e| CaError::Generate {
            what: "encoding the URI SAN",
            source: e,
        })?);
        let state = self.state();
        let (cert, serial, _, not_after) = self.sign_leaf(
            &state,
            &public,
            Leaf {
                sans: vec![san],
                kind: Kind::Workload,
                registry_id: uri.clone(),
                ttl,
                rsa,
            },
        )?;
        let mut chain = Vec::with_capacity(1 + state.signer.chain_tail.len());
        chain.push(pem_encode("CERTIFICATE", cert.der()));
        chain.extend(state.signer.chain_tail.iter().cloned());
        let holding = CsrHolding {
            spiffe_id: uri,
            holder: String::new(),
            serial,
            not_after,
            signer_serial: state.signer.serial_hex.clone(),
            trusted_roots: state
                .ca_infos
                .iter()
                .filter(|i| i.kind == "root")
                .map(|i| i.serial.clone())
                .collect(),
        };
        Ok((chain, holding))
    }

    /// Signs a CSR for `id` on behalf of `holder` (the caller's workload) and records it in
    /// the ledger a root rotation consults ([`csr_holders_behind`](Self::csr_holders_behind)).
    /// Returns the chain and the trust bundle served with it.
    pub(crate) fn sign_csr_for_holder(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        holder: &str,
        ttl: Option<Duration>,
    ) -> Result<(Vec<String>, String), CaError> {
        // The bundle read before signing: the roots recorded are ones the caller really got.
        let bundle = self.root_cert_pem();
        let (chain, mut holding) = self.sign_csr_recorded(csr_pem, id, ttl)?;
        holding.holder = holder.to_string();
        let cap = MAX_CSR_HOLDERS.min(self.registry_cap.load(std::sync::atomic::Ordering::Relaxed));
        self.csr_ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(holding, cap, SystemTime::now());
        Ok((chain, bundle))
    }

    /// How long before the certificate's NotAfter it is due for rotation: min(rotation_window,
    /// lifetime / 2), where the lifetime counts from issuance (NotBefore is back-dated for
    /// clock skew; that margin is not life the certificate was issued for — counting it would
    /// make a 30 s certificate with a 24 h window "due" the moment it is issued).
    pub fn rotation_window_for(&self, validity: Validity) -> Duration {
        let issued_at = validity.not_before + BACKDATE;
        let lifetime = validity
            .not_after
            .duration_since(issued_at)
            .unwrap_or_default();
        self.rotation_window.min(lifetime / 2)
    }

    /// True when the certificate's remaining life is below min(rotation_window, lifetime / 2)
    /// (or it has expired). See [`rotation_window_for`](Self::rotation_window_for).
    pub fn rotation_due(&self, validity: Validity, now: SystemTime) -> bool {
        let Ok(remaining) = validity.not_after.duration_since(now) else {
            return true;
        };
        remaining < self.rotation_window_for(validity)
    }

    /// A signed credential for `claims` (`meshd1.<claims>.<mac>`). Refused when it would be
    /// longer than [`MAX_CREDENTIAL_LEN`]: a credential no verifier accepts is
    /// never handed out.
    pub fn issue_credential(&self, claims: &WorkloadClaims) -> Result<String, CaError> {
        credential::issue(&self.cred_key, claims)
    }

    /// Checks a credential's MAC (constant time) and expiry, and returns its claims.
    pub fn verify_credential(&self, token: &str) -> Result<WorkloadClaims, CaError> {
        self.verify_credential_at(token, SystemTime::now())
    }

    /// As [`verify_credential`](Self::verify_credential), as of `now`.
    pub fn verify_credential_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<WorkloadClaims, CaError> {
        credential::verify(&self.cred_key, token, now)
    }

    /// A TLS server certificate (fresh P-256 key) for meshd's own listeners. Names that
    /// parse as IP addresses become IP SANs, the rest DNS SANs.
    pub fn server_cert(&self, dns_names: &[String]) -> Result<IssuedCert, CaError> {
        if dns_names.is_empty() {
            return Err(CaError::InvalidServerName {
                name: String::new(),
                reason: "at least one DNS name or IP address is required".into(),
            });
        }
        let mut sans = Vec::with_capacity(dns_names.len());
        for name in dns_names {
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
                continue;
            }
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').enumerate().all(|(i, label)| {
                    (!label.is_empty() && label.len() <= 63)
                        && label.chars().all(|c| {
                            c.is_ascii_alphanumeric()
                                || c == '-'
                                || (c == '*' && i == 0 && label == "*")
                        })
                });
            if !valid {
                return Err(CaError::InvalidServerName {
                    name: name.clone(),
                    reason: "not a DNS name or IP address".into(),
                });
            }
            sans.push(SanType::DnsName(name.clone().try_into().map_err(|e| {
                CaError::InvalidServerName {
                    name: name.clone(),
                    reason: format!("{e}"),
                }
            })?));
        }
        self.issue_with_new_key(None, sans, Kind::Server, String::new())
    }
}
