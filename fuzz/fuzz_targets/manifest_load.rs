//! Fuzz target `manifest_load`: arbitrary bytes through the whole manifest loader
//! (`tend::manifest::load_files_with`), as `tend validate` and `plan` run it: YAML parsing,
//! schemas, names, refs and interpolation, credentials, tenant expansion, edges, confinement,
//! claims and the secret checks, then rendering every diagnostic with its source line.
//!
//! The input is one or several files: it is split at NUL bytes (which YAML cannot contain) into
//! up to eight in-memory files under a root that does not exist, the odd ones in `tenants/`. A
//! chunk that is not UTF-8 becomes a file that could not be read. Errors are fine; a panic is a
//! bug.

#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tend::manifest::{LoadOptions, Secrets, SourceFile, load_files_with};

/// The manifests root: nothing is there, so `fromFile` and the confinement checks read nothing.
const ROOT: &str = "/nonexistent/tend-fuzz-root";
const MAX_FILES: usize = 8;

fn files(data: &[u8]) -> Vec<SourceFile> {
    data.splitn(MAX_FILES, |b| *b == 0)
        .enumerate()
        .map(|(i, chunk)| {
            let path = if i.is_multiple_of(2) {
                PathBuf::from(format!("f{i}.yaml"))
            } else {
                PathBuf::from(format!("tenants/f{i}.yaml"))
            };
            let text = String::from_utf8(chunk.to_vec()).map_err(|e| e.to_string());
            (path, text)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // Both secrets modes (`plan` and `validate`), chosen by the input so each run is repeatable.
    let secrets = if data.len().is_multiple_of(2) {
        Secrets::Required
    } else {
        Secrets::Optional
    };
    let opts = LoadOptions {
        secrets_dirs: Vec::new(),
        secrets,
    };
    match load_files_with(Path::new(ROOT), files(data), &opts) {
        Ok(set) => {
            for w in &set.warnings {
                let _ = w.render();
            }
        }
        Err(errors) => {
            assert!(
                !errors.0.is_empty(),
                "a failed load names at least one problem"
            );
            let _ = errors.to_string();
        }
    }
});
