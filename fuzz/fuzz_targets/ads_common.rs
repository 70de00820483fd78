//! One ADS server over the embedded VoiceCore mesh, for billing's sidecar, shared by the ADS
//! fuzz targets. An input is one stream's request body: its first byte picks the DATA chunk
//! size (so messages split across chunks get exercised), the rest are the body's bytes.

use meshd_xds::Identity;
use meshd_ads::ServerOptions;
use meshd_ads::fuzzing::Driver;
use std::sync::LazyLock;

pub static DRIVER: LazyLock<Driver> = LazyLock::new(|| {
    Driver::new(
        meshd::source::FileSource::new(None).reload(),
        Identity {
            workload: "billing-service-v1".into(),
            namespace: "voicecore-ai".into(),
            service_account: "billing-service".into(),
            trust_domain: "cluster.local".into(),
        },
        ServerOptions {
            // Small enough that the fuzzer reaches the limit paths.
            max_subscribed_names: 64,
            max_request_bytes: 64 << 10,
            ..ServerOptions::default()
        },
    )
});

/// (DATA chunk size, body)
pub fn split(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (usize::from(*first).max(1) * 16, rest),
        None => (1, data),
    }
}
