//! The CreateCertificate request path after authentication: protobuf decoding of
//! `IstioCertificateRequest` (the bytes the gRPC codec hands over), then the checks and
//! signing of `CertificateAuthority::create_certificate`. Never a panic; a certificate only
//! for the caller.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use meshd_ca::SpiffeId;
use meshd_ca::istio_api::IstioCertificateRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = IstioCertificateRequest::decode(data) else {
        return;
    };
    let caller = SpiffeId::new("cluster.local", "fuzz", "caller");
    if let Ok(resp) = common::CA.create_certificate(&caller, &req) {
        assert!(resp.cert_chain.len() >= 2, "leaf and root bundle");
        assert!(resp.cert_chain[0].starts_with("-----BEGIN CERTIFICATE-----"));
    }
});
