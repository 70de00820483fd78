//! The production server does not link the harness: `meshd` built as the image builds it
//! (`--no-default-features`, deploy/Dockerfile) has no path to this crate in its dependency
//! graph, and the default build (`cargo run --bin meshd -- demo`) has it.

use std::process::Command;

/// The normal and build dependencies of the `meshd` package with `features`, one package a line.
fn meshd_dependencies(features: &[&str]) -> String {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "--manifest-path", manifest])
        .args(["-p", "meshd", "-e", "normal,build", "--prefix", "none"])
        .args(features)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn links_harness(tree: &str) -> bool {
    tree.lines().any(|l| l.starts_with("meshd-localmesh "))
}

#[test]
fn image_build_of_meshd_has_no_harness() {
    let tree = meshd_dependencies(&["--no-default-features"]);
    assert!(tree.lines().any(|l| l.starts_with("meshd-xds ")), "{tree}");
    assert!(!links_harness(&tree), "{tree}");
}

#[test]
fn default_build_of_meshd_has_the_demo() {
    let tree = meshd_dependencies(&[]);
    assert!(links_harness(&tree), "{tree}");
}
