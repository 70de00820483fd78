//! meshd against a real kube-apiserver (scripts/kube-apiserver.sh): watches, leader election,
//! CRD schemas, validation, injection end to end. One test binary instead of one per file; the
//! real node (kube_cluster.rs) stays a binary of its own, run alone.
mod kube_support;

mod kube_apiserver;
mod kube_config_bomb;
mod kube_crd_schemas;
mod kube_faults;
mod kube_injection_e2e;
mod kube_roundtrip;
mod kube_validation;
mod webhook_revisions;
