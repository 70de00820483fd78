//! The local-mesh harness: network-namespace "pods" on this machine (`podnet`), a control plane
//! and sidecar pods wired together (`mesh`), `meshd demo` on top of them (`demo`), and the small
//! HTTP app those pods run (`workload_app`). The end-to-end tests and `meshd demo` share it; the
//! production server does not link it (the `meshd` package's `demo` feature pulls it in).

pub mod demo;
pub mod mesh;
pub mod podnet;
pub mod workload_app;
