//! The tidy test (rust-analyzer's habit): the module boundaries ARCHITECTURE.md promises are
//! read from its table and checked against the code. A core module names no concrete kind
//! (kinds reach the core only through `registry::MODELS`), no module imports a watched crate or
//! module its row does not allow, every file under `src/` has a row, and every file opens with
//! a `//!` doc comment saying what it is for.

use std::path::{Path, PathBuf};

/// Crates and modules whose use the table governs.
const WATCHED: [&str; 6] = [
    "tokio",
    "async_trait",
    "std::fs",
    "reqwest",
    "tokio_postgres",
    "crate::provider",
];

struct Row {
    path: String,
    core: bool,
    allowed: Vec<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rows between the `tidy:begin` and `tidy:end` markers of ARCHITECTURE.md.
fn rows() -> Vec<Row> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text
        .find("<!-- tidy:begin -->")
        .expect("a tidy:begin marker");
    let end = text.find("<!-- tidy:end -->").expect("a tidy:end marker");
    let unquote = |c: &str| c.trim().trim_matches('`').to_owned();
    let rows: Vec<Row> = text[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split('|').collect();
            assert_eq!(cells.len(), 3, "a tidy row has three cells: {l}");
            let allowed: Vec<String> = cells[2]
                .split(',')
                .map(unquote)
                .filter(|s| !s.is_empty())
                .collect();
            for a in &allowed {
                assert!(WATCHED.contains(&a.as_str()), "`{a}` is not watched: {l}");
            }
            Row {
                path: unquote(cells[0]),
                core: cells[1].trim() == "yes",
                allowed,
            }
        })
        .collect();
    assert!(rows.len() > 10, "the table was not found whole");
    rows
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code: everything before its test module, without comment lines or trailing
/// comments.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or_default();
    body.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string (`http://…`) is not a comment: keep lines where the
            // marker follows an odd number of quotes.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `word` occurs in `text` as a whole path segment.
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

#[test]
fn modules_keep_to_the_boundaries_architecture_md_draws() {
    let rows = rows();
    let kinds: Vec<&str> = tend::registry::MODELS
        .iter()
        .map(|m| m.name())
        .filter(|n| *n != tend::address::Kind::CREDENTIAL.as_str())
        .collect();
    assert!(kinds.len() >= 5, "{kinds:?}");
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root())
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let Some(row) = rows
            .iter()
            .filter(|r| {
                r.path == rel || (r.path.ends_with('/') && rel.starts_with(r.path.as_str()))
            })
            .max_by_key(|r| r.path.len())
        else {
            problems.push(format!("{rel}: no row in ARCHITECTURE.md's module table"));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        if !text.starts_with("//!") {
            problems.push(format!("{rel}: does not open with a `//!` doc comment"));
        }
        let code = code(&text);
        for w in WATCHED {
            if mentions(&code, w) && !row.allowed.iter().any(|a| a == w) {
                problems.push(format!("{rel}: uses `{w}`, which its row does not allow"));
            }
        }
        if row.core {
            for k in &kinds {
                if mentions(&code, k) {
                    problems.push(format!("{rel}: a core module names the kind `{k}`"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_what_it_must() {
    // The checks themselves, on text: a kind in a string counts, one in a comment or a test
    // module does not, and a longer identifier is not the word.
    let src = "//! doc\nfn f() { let k = \"NomadJob\"; } // PostgresDatabase\n#[cfg(test)]\nmod tests { PulumiStack }\n";
    let c = code(src);
    assert!(mentions(&c, "NomadJob"));
    assert!(!mentions(&c, "PostgresDatabase"));
    assert!(!mentions(&c, "PulumiStack"));
    assert!(!mentions("tokio_postgres::Client", "tokio"));
    assert!(mentions("use tokio::sync::Mutex;", "tokio"));
    assert!(mentions(
        "let u = \"http://x\"; std::fs::read(p)",
        "std::fs"
    ));
}
