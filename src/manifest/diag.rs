//! Manifest diagnostics: an error with the file, line and column where it was written, the
//! offending line, and an optional hint. A load collects all of them instead of stopping at
//! the first. Pure: rendering takes the source text as a value.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use super::node::Pos;

/// Whether a diagnostic fails the load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Severity {
    /// The load fails.
    #[default]
    Error,
    /// Reported, the load goes on (e.g. a credential source `tend validate` need not read).
    Warning,
}

/// One problem in the manifests.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The file, relative to the manifests root.
    pub file: Arc<PathBuf>,
    pub pos: Pos,
    pub severity: Severity,
    pub message: String,
    pub help: Option<String>,
    /// The source line the position points into, when known.
    pub line_text: Option<String>,
    /// A plaintext secret whose value starts at `pos`: the source line is shown masked from
    /// there to its end, and elsewhere on it wherever the secret's text appears (unless it
    /// is shorter than [`MIN_REDACT`], when replacing it would point the secret out).
    pub redact: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &Arc<PathBuf>, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            file: Arc::clone(file),
            pos,
            severity: Severity::Error,
            message: message.into(),
            help: None,
            line_text: None,
            redact: None,
        }
    }

    /// The same problem as a warning.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:col`.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file.display(), self.pos.line, self.pos.col)
    }

    /// Render like rustc: message, location, the line with a caret, then the hint.
    pub fn render(&self) -> String {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut s = format!("{level}: {}\n  --> {}\n", self.message, self.location());
        if let Some(line) = &self.line_text {
            let n = self.pos.line.to_string();
            let pad = " ".repeat(n.len());
            let caret = " ".repeat(self.pos.col.saturating_sub(1) as usize);
            let _ = write!(s, "{pad} |\n{n} | {line}\n{pad} | {caret}^\n");
        }
        if let Some(help) = &self.help {
            let _ = writeln!(s, "  = help: {help}");
        }
        s
    }
}

/// Attach source lines to diagnostics of one file.
pub fn attach_source(diags: &mut [Diagnostic], text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    for d in diags.iter_mut() {
        if d.line_text.is_none() && d.pos.line > 0 {
            d.line_text = lines.get(d.pos.line as usize - 1).map(|l| match &d.redact {
                Some(secret) => redact_line(l, d.pos.col, secret),
                None => (*l).to_owned(),
            });
        }
    }
}

/// Secrets shorter than this are masked only where they are written, not wherever their
/// text appears on the line (a one-letter password would blank out every such letter).
const MIN_REDACT: usize = 4;

/// `line` with everything from column `col` (1-based, in characters: where the secret's
/// value starts) replaced by `(sensitive)`, and `secret` masked before it too.
fn redact_line(line: &str, col: u32, secret: &str) -> String {
    let at = line
        .char_indices()
        .nth(col.saturating_sub(1) as usize)
        .map_or(line.len(), |(i, _)| i);
    let head = &line[..at];
    let head = if secret.chars().count() >= MIN_REDACT {
        head.replace(secret, "(sensitive)")
    } else {
        head.to_owned()
    };
    format!("{head}(sensitive)")
}

/// The closest candidate to `got`, if it is close enough to be a likely typo.
pub fn suggest<'a>(got: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(got, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_field() {
        assert_eq!(
            suggest("databse", ["server", "database", "owner"]),
            Some("database")
        );
        assert_eq!(suggest("zzz", ["server", "database"]), None);
    }

    #[test]
    fn a_plaintext_secret_is_masked_from_its_value_on_however_short() {
        let line = r#"  data: {host: db.example.internal, user: hunter2, password: "x"}"#;
        let col = line.find("\"x\"").expect("value") as u32 + 1;
        assert_eq!(
            redact_line(line, col, "x"),
            "  data: {host: db.example.internal, user: hunter2, password: (sensitive)"
        );
        // A longer secret is also masked where its text appears before the value.
        let line = "  data: {user: hunter2, password: hunter2}";
        let col = line.rfind("hunter2").expect("value") as u32 + 1;
        let shown = redact_line(line, col, "hunter2");
        assert_eq!(shown, "  data: {user: (sensitive), password: (sensitive)");
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn renders_file_line_col_and_caret() {
        let file = Arc::new(PathBuf::from("a.yaml"));
        let mut d =
            vec![Diagnostic::new(&file, Pos { line: 2, col: 3 }, "bad").with_help("fix it")];
        attach_source(&mut d, "x: 1\n  y: 2\n");
        let r = d[0].render();
        assert!(r.contains("a.yaml:2:3"), "{r}");
        assert!(r.contains("2 |   y: 2"), "{r}");
        assert!(r.contains("  |   ^"), "{r}");
        assert!(r.contains("help: fix it"), "{r}");
    }
}
