//! `meshd analyze`: the server's own validation, offline.

use meshd_model::{MeshConfig, parse_file};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn collect(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    files
}

/// Every problem as `file:line: message`, in file order.
pub fn analyze(paths: &[PathBuf]) -> Vec<String> {
    report(paths).0
}

/// The problems, and the warnings: valid fields meshd accepts but does not act on (reported,
/// not failing the run).
pub fn report(paths: &[PathBuf]) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    for file in collect(paths) {
        let name = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Err(e) => problems.push(format!("{name}:0: cannot read: {e}")),
            Ok(text) => match parse_file(&name, &text) {
                Ok(cfg) => parsed.push(cfg),
                Err(errors) => problems.extend(errors.iter().map(|e| e.to_string())),
            },
        }
    }
    let mesh = MeshConfig::assemble(&parsed);
    problems.extend(mesh.rejected.iter().map(|r| r.to_string()));
    let warnings = mesh
        .warnings
        .iter()
        .map(|w| format!("warning: {w}"))
        .collect();
    // What only the generator finds (e.g. an EnvoyFilter value that is not Envoy's proto JSON).
    let snapshot = meshd_xds::MeshSnapshot::build(
        0,
        std::sync::Arc::new(mesh),
        std::sync::Arc::new(meshd_xds::GenOptions::default()),
    );
    problems.extend(snapshot.patches.problems.iter().map(|r| r.to_string()));
    (problems, warnings)
}

pub fn run(paths: &[PathBuf]) -> ExitCode {
    let (problems, warnings) = report(paths);
    for p in problems.iter().chain(&warnings) {
        println!("{p}");
    }
    if problems.is_empty() {
        let shown: Vec<String> = paths
            .iter()
            .map(|p| Path::new(p).display().to_string())
            .collect();
        eprintln!("✔ no problems found in {}", shown.join(", "));
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_mesh_is_clean_and_bad_files_are_located() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mesh");
        assert!(analyze(&[root]).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: a\n  bogus: 1\n",
        )
        .unwrap();
        let problems = analyze(&[dir.path().to_path_buf()]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(&format!("{}:6: ", bad.display())),
            "{}",
            problems[0]
        );
        assert!(problems[0].contains("bogus"));
    }
}
