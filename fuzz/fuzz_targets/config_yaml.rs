//! Whole multi-document Istio YAML, as a file in `--config-dir` or `meshd analyze` reads it:
//! parse → validate → MeshConfig → snapshot → one proxy's resources, never a panic. Seeded with
//! the shipped VoiceCore mesh (fuzz/seeds/config_yaml).
#![no_main]

mod mesh;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        mesh::run(text);
    }
});
