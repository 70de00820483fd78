//! Istio's control-plane metric names on `/metrics`, next to meshd's own `meshd_*` series, so
//! the dashboards and alerts written for istiod read meshd unchanged: the ADS server's
//! `pilot_*` (kept live by `meshd_xds`), the CA's `citadel_server_*` (read from the CA's
//! counters at scrape time) and the injector's `sidecar_injection_*_total`. Encoded with prometheus-client; no label carries a proxy or a
//! certificate, so the series count is fixed.

use super::AdminState;
use meshd_ads::istio_metrics::BareCounter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// CreateCertificate refusals by Istio's error counter they belong to.
fn citadel_error_counter(reason: &str) -> &'static str {
    match reason {
        "unauthenticated" | "unregistered" => "citadel_server_authentication_failure_count",
        "malformed" | "bad_signature" | "weak_key" | "unsupported_key" => {
            "citadel_server_csr_parsing_err_count"
        }
        "impersonation" | "identity" => "citadel_server_id_extraction_err_count",
        _ => "citadel_server_csr_sign_err_count",
    }
}

fn citadel(s: &AdminState, registry: &mut Registry) {
    let signed = s
        .ca_metrics
        .csr_signed
        .load(std::sync::atomic::Ordering::Relaxed);
    let rejected = s.ca_metrics.rejected_by_reason();
    let received = BareCounter::default();
    received.inc_by(signed + rejected.values().sum::<u64>());
    registry.register(
        "citadel_server_csr_count",
        "The number of CSRs received by Citadel server",
        received,
    );
    let issued = BareCounter::default();
    let workload = s.ca.issued_totals()[0].1;
    issued.inc_by(workload);
    registry.register(
        "citadel_server_success_cert_issuance_count",
        "The number of certificates issuances that have succeeded (SDS and CreateCertificate)",
        issued,
    );
    for (name, help) in [
        (
            "citadel_server_authentication_failure_count",
            "The number of authentication failures",
        ),
        (
            "citadel_server_csr_parsing_err_count",
            "The number of errors occurred when parsing the CSR",
        ),
        (
            "citadel_server_id_extraction_err_count",
            "The number of errors occurred when extracting the ID from CSR",
        ),
        (
            "citadel_server_csr_sign_err_count",
            "The number of errors occurred when signing the CSR",
        ),
    ] {
        let errors = BareCounter::default();
        errors.inc_by(
            rejected
                .iter()
                .filter(|(reason, _)| citadel_error_counter(reason) == name)
                .map(|(_, n)| n)
                .sum(),
        );
        registry.register(name, help, errors);
    }
    let root_expiry =
        s.ca.issued_summary()
            .kinds
            .iter()
            .find(|k| k.kind == "root")
            .and_then(|k| k.earliest_expiry)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let gauge = Gauge::<i64>::default();
    gauge.set(root_expiry);
    registry.register(
        "meshd_csr_sign_duration_seconds",
        "Time to check and sign one CreateCertificate CSR, for the CSRs signed",
        s.ca_metrics.sign_seconds.clone(),
    );
    registry.register(
        "citadel_server_root_cert_expiry_timestamp",
        "The unix timestamp, in seconds, when Citadel root cert will expire",
        gauge,
    );
}

/// Appends the Istio-named series to `out` (Prometheus text format).
pub fn encode_into(s: &AdminState, out: &mut String) {
    let mut registry = Registry::default();
    s.metrics.pilot.register(&mut registry);
    citadel(s, &mut registry);
    s.injection_metrics.register(&mut registry);
    s.jwks.register(&mut registry);
    s.reg_events.register(&mut registry);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_ok() {
        out.push_str(text.trim_end().trim_end_matches("# EOF"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_lands_in_one_istio_error_counter() {
        for (reason, counter) in [
            (
                "unauthenticated",
                "citadel_server_authentication_failure_count",
            ),
            (
                "unregistered",
                "citadel_server_authentication_failure_count",
            ),
            ("weak_key", "citadel_server_csr_parsing_err_count"),
            ("identity", "citadel_server_id_extraction_err_count"),
            ("ttl_too_long", "citadel_server_csr_sign_err_count"),
            ("signer_unavailable", "citadel_server_csr_sign_err_count"),
        ] {
            assert_eq!(citadel_error_counter(reason), counter, "{reason}");
        }
    }
}
