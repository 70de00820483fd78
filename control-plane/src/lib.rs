//! meshd: config sources, identity, admin API, CLI and process wiring around the `xds` and `ca`
//! crates.

pub mod accept;
pub mod admin;
pub mod analyze;
pub mod app;
pub mod bootstrap;
pub mod bootstrap_patch;
pub mod ca_service;
pub mod cli;
pub mod crds;
pub mod debounce;
pub mod identity;
pub mod iptables;
pub mod jwks;
pub mod kube;
pub mod kube_bootstrap;
pub mod kube_inject;
pub mod memory;
pub mod mode;
pub mod proxy_wait;
pub mod readiness;
pub mod reg_events;
pub mod root_rotation;
pub mod snapshots;
pub mod source;
pub mod startup;
pub mod status_cli;
pub mod supervise;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
mod transport_limits;
pub mod validate_webhook;
pub mod webhook;

/// jemalloc rather than glibc's malloc: thousands of long-lived streams allocating and freeing
/// response buffers on two threads fragment glibc's arenas, and jemalloc both costs less CPU
/// here and returns freed pages on its own (see `memory`). Not under cargo-fuzz (`--cfg
/// fuzzing`): AddressSanitizer sees heap errors only through the system allocator; nor under
/// `--cfg meshd_system_alloc`, for heap profilers that hook malloc (heaptrack).
#[cfg(not(any(fuzzing, meshd_system_alloc)))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
