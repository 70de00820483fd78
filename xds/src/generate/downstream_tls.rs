//! TLS a proxy terminates with certificates of its own (not the mesh's): a Gateway server's
//! SIMPLE, MUTUAL and OPTIONAL_MUTUAL, from files or a `credentialName` over SDS, and a Sidecar
//! ingress listener's SIMPLE and MUTUAL from files. One builder, so both read Istio's
//! `ServerTLSSettings` the same way.

use super::common::*;
use crate::resource::any;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    TlsParameters, common_tls_context,
};
use meshd_model::credential;
use meshd_model::networking::ServerTlsSettings;

pub(super) fn tls_version(v: Option<&str>) -> i32 {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
    match v {
        Some("TLSV1_0") => TlsProtocol::TlSv10 as i32,
        Some("TLSV1_1") => TlsProtocol::TlSv11 as i32,
        Some("TLSV1_2") => TlsProtocol::TlSv12 as i32,
        Some("TLSV1_3") => TlsProtocol::TlSv13 as i32,
        _ => TlsProtocol::TlsAuto as i32,
    }
}

/// Whether a server mode checks client certificates against the server's CA.
pub(super) fn verifies_clients(mode: &str) -> bool {
    mode == "MUTUAL" || mode == "OPTIONAL_MUTUAL"
}

/// The downstream TLS of `mode` (upper case) under `tls`, offering `alpn`; `None` for a mode
/// that terminates nothing with the server's own certificate, or a certificate not given.
/// OPTIONAL_MUTUAL verifies a client certificate when one is presented and lets a client without
/// one through.
pub(super) fn server_tls(
    mode: &str,
    tls: &ServerTlsSettings,
    alpn: &[&str],
) -> Option<TransportSocket> {
    if !matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") {
        return None;
    }
    let mut common = CommonTlsContext {
        alpn_protocols: alpn.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    match &tls.credential_name {
        Some(name) => {
            common.tls_certificate_sds_secret_configs = vec![sds(&credential::sds_name(name))];
        }
        None => {
            let (cert, key) = (tls.server_certificate.as_ref()?, tls.private_key.as_ref()?);
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: Some(filename(cert)),
                private_key: Some(filename(key)),
                ..Default::default()
            }];
        }
    }
    if tls.min_protocol_version.is_some() || tls.max_protocol_version.is_some() {
        common.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: tls_version(tls.min_protocol_version.as_deref()),
            tls_maximum_protocol_version: tls_version(tls.max_protocol_version.as_deref()),
            ..Default::default()
        });
    }
    if verifies_clients(mode) {
        let sans = san_matchers(&tls.subject_alt_names);
        common.validation_context_type = Some(match &tls.credential_name {
            Some(name) => common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(&credential::sds_ca_name(name))),
                    ..Default::default()
                },
            ),
            None => common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: tls.ca_certificates.as_deref().map(filename),
                    crl: tls.ca_crl.as_deref().map(filename),
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                },
            ),
        });
    }
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: match mode {
            "MUTUAL" => boolv(true),
            "OPTIONAL_MUTUAL" => boolv(false),
            _ => None,
        },
        ..Default::default()
    };
    Some(tls_socket(any(&ctx)))
}
