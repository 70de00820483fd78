//! Certificates issued per second (fresh ECDSA P-256 key + leaf signed by the CA, one thread)
//! against the raw ring cost of the same crypto (P-256 keygen + one ECDSA signature).
//!
//! `cargo bench -p meshd-ca --bench issue` (optional arg: seconds per measurement, default 2).

use std::hint::black_box;
use std::time::{Duration, Instant};

use meshd_ca::{CaConfig, CertificateAuthority, SpiffeId};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    // warm up
    for _ in 0..50 {
        f();
    }
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::load_or_create(&CaConfig {
        state_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .expect("CA");
    let id = SpiffeId::new("cluster.local", "voice", "media-relay");

    let rng = SystemRandom::new();
    let ca_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let ca_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca_doc.as_ref(), &rng).unwrap();
    // about the size of a workload certificate's TBSCertificate
    let tbs = vec![0x5au8; 420];

    let mut issue = || {
        black_box(ca.issue_workload(black_box(&id)).unwrap());
    };
    let mut raw = || {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        black_box(doc.as_ref());
        black_box(ca_key.sign(&rng, black_box(&tbs)).unwrap());
    };
    // alternate to even out frequency scaling / noise; keep the best of three
    let (mut best_issue, mut best_raw) = (0f64, 0f64);
    for _ in 0..3 {
        best_raw = best_raw.max(rate(secs / 3.0, &mut raw));
        best_issue = best_issue.max(rate(secs / 3.0, &mut issue));
    }
    println!(
        "meshd-ca issue_workload (keygen+sign, ECDSA P-256, 1 thread): {best_issue:>9.0} certs/s"
    );
    println!("raw ring P-256 keygen + ECDSA sign:                          {best_raw:>9.0} ops/s");
    println!(
        "ratio issue/raw:                                             {:>9.2}",
        best_issue / best_raw
    );
}
