//! The README shows what the tests run (no cluster needed): its `argocd-cm` block is the health
//! check the e2e suites run on real objects, verbatim.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_readme_shows_the_tested_health_check() {
    let script = std::fs::read_to_string(root().join("docs/argocd-health.lua")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let indented: String = script
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        readme.contains(&indented),
        "README.md's argocd-cm block must hold docs/argocd-health.lua verbatim (indented 4 spaces)"
    );
}
