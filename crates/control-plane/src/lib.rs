//! meshd: config sources, identity, admin API, CLI and process wiring around the `xds` and `ca`
//! crates.

pub mod admin;
pub mod analyze;
pub mod app;
pub mod bootstrap;
pub mod ca_service;
pub mod cli;
pub mod demo;
pub mod identity;
pub mod iptables;
pub mod kube;
pub mod kube_bootstrap;
pub mod localmesh;
pub mod memory;
pub mod podnet;
pub mod root_rotation;
pub mod source;
pub mod status_cli;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhook;
pub mod workload_app;
