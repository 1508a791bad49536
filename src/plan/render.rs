//! Views of a plan: Terraform-like text (with or without colour) and JSON. Pure: takes a
//! [`Plan`] and returns strings. Secrets are already masked in the plan's data.

use std::fmt::Write as _;

use similar::TextDiff;

use super::{Action, FieldChange, Plan, ResourceChange};

/// Colours, or none.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn action(self, a: Action, s: &str) -> String {
        match a {
            Action::Create => self.paint("32", s),
            Action::Update => self.paint("33", s),
            Action::Replace => self.paint("35", s),
            Action::Delete => self.paint("31", s),
            Action::NoOp => s.to_owned(),
        }
    }
    pub fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
}

fn headline(c: &ResourceChange) -> String {
    let what = match c.action {
        Action::Create => "will be created",
        Action::Update => "will be updated in place",
        Action::Replace => "must be replaced",
        Action::Delete => "will be destroyed",
        Action::NoOp => "is up to date",
    };
    format!("# {} {what}", c.address)
}

/// The human plan.
pub fn text(plan: &Plan, style: Style) -> String {
    let mut s = String::new();
    let changed: Vec<&ResourceChange> = plan.changes.iter().filter(|c| c.action != Action::NoOp).collect();
    if changed.is_empty() && plan.errors.is_empty() {
        s.push_str("No changes. Your infrastructure matches the manifests.\n");
    } else if !changed.is_empty() {
        s.push_str("tend will perform the following actions:\n");
        for c in changed {
            s.push('\n');
            resource(&mut s, c, style);
        }
        s.push('\n');
        let _ = writeln!(s, "{}", style.bold(&plan.summary().line()));
    }
    for w in &plan.warnings {
        let _ = writeln!(s, "\n{} {w}", style.paint("33", "Warning:"));
    }
    for e in &plan.errors {
        let _ = writeln!(s, "\n{} {e}", style.paint("31", "Error:"));
    }
    s
}

fn resource(s: &mut String, c: &ResourceChange, style: Style) {
    let _ = writeln!(s, "  {}", style.bold(&headline(c)));
    for r in &c.reasons {
        let _ = writeln!(s, "  # ({r})");
    }
    let sym = c.action.symbol();
    let _ = writeln!(s, "{:>3} {} {{", style.action(c.action, sym), c.address);
    let width = c
        .fields
        .iter()
        .filter(|f| !is_multiline(f))
        .map(|f| f.path.len())
        .chain(c.drift.iter().map(|d| d.field.len() + 8))
        .max()
        .unwrap_or(0);
    for f in &c.fields {
        field(s, f, width, style);
    }
    for d in &c.drift {
        let label = format!("{} (drift)", d.field);
        let _ = writeln!(
            s,
            "      {} {label:<width$} = {} -> {}",
            style.action(Action::Update, "~"),
            d.found,
            d.expected
        );
    }
    s.push_str("    }\n");
}

fn is_multiline(f: &FieldChange) -> bool {
    f.before.as_deref().is_some_and(|v| v.contains("\\n")) || f.after.as_deref().is_some_and(|v| v.contains("\\n"))
}

fn field(s: &mut String, f: &FieldChange, width: usize, style: Style) {
    let note = if f.forces_replacement { style.paint("31", " # forces replacement") } else { String::new() };
    if is_multiline(f) {
        // Multi-line strings as a unified diff of their lines.
        let unquote = |v: &Option<String>| {
            v.as_deref()
                .and_then(|x| serde_json::from_str::<String>(x).ok())
                .unwrap_or_default()
        };
        let (b, a) = (unquote(&f.before), unquote(&f.after));
        let _ = writeln!(s, "      {} {} = <<-EOT{note}", style.action(Action::Update, "~"), f.path);
        let diff = TextDiff::from_lines(&b, &a);
        for line in diff.unified_diff().context_radius(3).to_string().lines() {
            if line.starts_with("@@") {
                continue;
            }
            let _ = writeln!(s, "            {line}");
        }
        s.push_str("        EOT\n");
        return;
    }
    match (&f.before, &f.after) {
        (None, Some(a)) => {
            let _ = writeln!(s, "      {} {:<width$} = {a}{note}", style.action(Action::Create, "+"), f.path);
        }
        (Some(b), None) => {
            let _ = writeln!(s, "      {} {:<width$} = {b} -> null{note}", style.action(Action::Delete, "-"), f.path);
        }
        (Some(b), Some(a)) => {
            let _ = writeln!(s, "      {} {:<width$} = {b} -> {a}{note}", style.action(Action::Update, "~"), f.path);
        }
        (None, None) => {}
    }
}

/// The machine-readable plan (schema documented in the README).
pub fn json(plan: &Plan) -> serde_json::Value {
    let s = plan.summary();
    serde_json::json!({
        "format_version": "1",
        "summary": { "add": s.add, "change": s.change, "destroy": s.destroy },
        "changes": plan.changes.iter().map(|c| serde_json::json!({
            "address": c.address.to_string(),
            "action": c.action,
            "fields": c.fields,
            "drift": c.drift,
            "reasons": c.reasons,
        })).collect::<Vec<_>>(),
        "errors": plan.errors,
        "warnings": plan.warnings,
    })
}
