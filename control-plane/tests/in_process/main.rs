//! The control plane in process on 127.0.0.1:0, no root, no network namespace, no Envoy, no
//! kube-apiserver: ADS, the CA API, the webhook, transport limits, a fake API server. One test
//! binary (one link, one file on disk) instead of one per file; scripts/test-fast.sh runs it.
mod access_log_support;

mod access_log_service;
mod ads_protocol;
mod bootstrap_patches;
mod ca_api;
mod config_bombs;
mod dashboard_api;
mod identity_binding;
mod kube_fake_apiserver;
mod kube_inject;
mod log_format;
mod no_key_material;
mod telemetry_providers;
mod token_review_limits;
mod transport_limits;
mod webhook;
