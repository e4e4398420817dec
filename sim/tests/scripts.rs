//! Runs every `testdata/*.txt` script at the workspace root (format: `paxoskv_sim::script`,
//! and `testdata/README.md`). Scripts under `testdata/known/` show suspected core bugs and
//! are not part of this run.

use paxoskv_sim::script::{run_file, Options};
use std::path::PathBuf;

fn scripts() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_script_passes() {
    let files = scripts();
    assert!(!files.is_empty(), "no scripts found");
    let options = Options::from_env();
    let verbose = std::env::var("PAXOSKV_SCRIPT_VERBOSE").is_ok_and(|v| v == "1");
    let only = std::env::var("PAXOSKV_SCRIPT").ok();
    let mut failures = Vec::new();
    for file in &files {
        if only
            .as_ref()
            .is_some_and(|o| !file.to_string_lossy().contains(o.as_str()))
        {
            continue;
        }
        match run_file(file, options) {
            Ok(transcript) => {
                if verbose {
                    println!("=== {}\n{transcript}", file.display());
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
