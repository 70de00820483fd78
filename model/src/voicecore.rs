//! The VoiceCore mesh the project ships (`deploy/mesh/*.yaml`), embedded in one place: `meshd
//! serve` with no config directory serves it, and tests across the workspace read it from here
//! instead of reaching into `deploy/` themselves.

/// Services, workloads and traffic policy (`deploy/mesh/voicecore.yaml`).
pub const MESH_YAML: &str = include_str!("../../deploy/mesh/voicecore.yaml");
/// The authorization policies (`deploy/mesh/voicecore-authz.yaml`).
pub const AUTHZ_YAML: &str = include_str!("../../deploy/mesh/voicecore-authz.yaml");
/// Both files, by the name each has under `deploy/mesh/`.
pub const FILES: [(&str, &str); 2] = [
    ("voicecore.yaml", MESH_YAML),
    ("voicecore-authz.yaml", AUTHZ_YAML),
];
