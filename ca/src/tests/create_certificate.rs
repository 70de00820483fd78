//! Istio's CreateCertificate handling without gRPC: chain, identity binding and rejections.

use super::*;

#[test]
fn create_certificate_chain_identity_and_rejections() {
    use crate::istio_api::*;
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let caller = id("payments", "ledger");
    // The CSR asks for another identity and a DNS name: both ignored.
    let (csr, _) = csr_with_sans(vec![
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ]);
    let req = |csr: &str, ttl: i64| IstioCertificateRequest {
        csr: csr.into(),
        validity_duration: ttl,
        metadata: None,
    };
    let resp = ca.create_certificate(&caller, &req(&csr, 3600)).unwrap();
    assert_eq!(resp.cert_chain.len(), 2, "leaf, then the root bundle");
    assert_eq!(resp.cert_chain[1], ca.root_cert_pem());
    let leaf = pems(&resp.cert_chain[0]).swap_remove(0);
    check_leaf(
        &leaf,
        &pems(&ca.root_cert_pem())[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/payments/sa/ledger"),
    );
    assert!(dns_sans(&x509(&leaf)).is_empty());
    let life = secs(x509_time(x509(&leaf).validity().not_after))
        - secs(x509_time(x509(&leaf).validity().not_before));
    assert_eq!(life, 3600 + BACKDATE.as_secs() as i64);
    openssl_verify(
        dir.path(),
        &resp.cert_chain[1],
        &resp.cert_chain[0],
        "sslclient",
    );
    // default TTL when unset
    ca.create_certificate(&caller, &req(&csr, 0)).unwrap();

    let rejected = |r: &IstioCertificateRequest| ca.create_certificate(&caller, r).unwrap_err();
    let e = rejected(&req(&csr, 91 * 24 * 3600));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "ttl_too_long")
    );
    assert!(e.message.contains("exceeds the maximum"), "{e}");
    let e = rejected(&req(&csr, -5));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "ttl_invalid")
    );
    let e = rejected(&req("", 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "malformed")
    );
    let e = rejected(&req("-----BEGIN CERTIFICATE REQUEST-----\n!!\n", 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "malformed")
    );
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
    let mut der = pem.contents.clone();
    let n = der.len();
    der[n - 1] ^= 0x01;
    let e = rejected(&req(&pem_encode("CERTIFICATE REQUEST", &der), 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "bad_signature")
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=x",
        ])
        .output()
        .unwrap();
    let e = rejected(&req(&String::from_utf8(out.stdout).unwrap(), 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "weak_key")
    );
    assert!(e.message.contains("1024"), "{e}");

    // Impersonation through metadata is refused; naming oneself is fine.
    let meta = |who: &str| {
        let mut s = prost_types::Struct::default();
        s.fields.insert(
            IMPERSONATED_IDENTITY.into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(who.into())),
            },
        );
        Some(s)
    };
    let mut r = req(&csr, 0);
    r.metadata = meta("spiffe://cluster.local/ns/kube-system/sa/admin");
    let e = rejected(&r);
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::PermissionDenied, "impersonation")
    );
    r.metadata = meta(&caller.to_string());
    ca.create_certificate(&caller, &r).unwrap();

    // Wire round trip of the hand-written messages.
    use prost::Message;
    let bytes = r.encode_to_vec();
    assert_eq!(
        IstioCertificateRequest::decode(bytes.as_slice()).unwrap(),
        r
    );
}
