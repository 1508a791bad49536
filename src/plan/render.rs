//! Views of a plan: Terraform-like text (with or without colour) and JSON. Pure: takes a
//! [`Plan`] and returns strings. Secrets are already masked in the plan's data.

use std::fmt::Write as _;

use serde::Deserialize;
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
            Action::Adopt => self.paint("36", s),
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
        Action::Adopt => "will be adopted",
        Action::NoOp => "is up to date",
    };
    format!("# {} {what}", c.address)
}

/// The human plan.
pub fn text(plan: &Plan, style: Style) -> String {
    let mut s = String::new();
    let changed: Vec<&ResourceChange> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .collect();
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
    for d in &c.details {
        let _ = writeln!(s, "    # {d}");
    }
}

fn is_multiline(f: &FieldChange) -> bool {
    f.before.as_deref().is_some_and(|v| v.contains("\\n"))
        || f.after.as_deref().is_some_and(|v| v.contains("\\n"))
}

fn field(s: &mut String, f: &FieldChange, width: usize, style: Style) {
    let note = if f.forces_replacement {
        style.paint("31", " # forces replacement")
    } else {
        String::new()
    };
    if is_multiline(f) {
        // Multi-line strings as a unified diff of their lines.
        let unquote = |v: &Option<String>| {
            v.as_deref()
                .and_then(|x| serde_json::from_str::<String>(x).ok())
                .unwrap_or_default()
        };
        let (b, a) = (unquote(&f.before), unquote(&f.after));
        let _ = writeln!(
            s,
            "      {} {} = <<-EOT{note}",
            style.action(Action::Update, "~"),
            f.path
        );
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
            let _ = writeln!(
                s,
                "      {} {:<width$} = {a}{note}",
                style.action(Action::Create, "+"),
                f.path
            );
        }
        (Some(b), None) => {
            let _ = writeln!(
                s,
                "      {} {:<width$} = {b} -> null{note}",
                style.action(Action::Delete, "-"),
                f.path
            );
        }
        (Some(b), Some(a)) => {
            let _ = writeln!(
                s,
                "      {} {:<width$} = {b} -> {a}{note}",
                style.action(Action::Update, "~"),
                f.path
            );
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
            "details": c.details,
        })).collect::<Vec<_>>(),
        "errors": plan.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        "warnings": plan.warnings,
    })
}

/// The plan back from its JSON view (as the daemon's control socket sends it): the inverse of
/// [`json`], so `json(&from_json(&json(p))?) == json(p)` and the text views agree too. The
/// summary is derived, so it is not read; a `format_version` other than `"1"` is refused.
pub fn from_json(doc: &serde_json::Value) -> Result<Plan, serde_json::Error> {
    PlanDoc::deserialize(doc).map(Plan::from)
}

/// The fields of the plan JSON that carry data (field names as documented in the README).
#[derive(Deserialize)]
struct PlanDoc {
    /// Checked by deserialising: only `"1"` is known.
    #[serde(rename = "format_version")]
    _format_version: FormatVersion,
    changes: Vec<ResourceChange>,
    /// Messages only: the address an error is about stays with the planner.
    #[serde(default)]
    errors: Vec<super::PlanError>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
enum FormatVersion {
    #[serde(rename = "1")]
    V1,
}

impl From<PlanDoc> for Plan {
    fn from(d: PlanDoc) -> Self {
        Plan {
            changes: d.changes,
            errors: d.errors,
            warnings: d.warnings,
            timed_out: Vec::new(),
        }
    }
}

/// `#[serde(with = "as_json")]`: a [`Plan`] field written as the plan JSON.
pub mod as_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Plan, PlanDoc};

    pub fn serialize<S: Serializer>(plan: &Plan, s: S) -> Result<S::Ok, S::Error> {
        super::json(plan).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Plan, D::Error> {
        PlanDoc::deserialize(d).map(Plan::from)
    }
}

#[cfg(test)]
mod tests {
    //! Plan rendering snapshots: one `check` helper builds a plan from desired × recorded ×
    //! observed through the pure `decide` with a fake kind model, and renders it.

    use std::time::Duration;

    use super::*;
    use crate::address::{Address, Kind};
    use crate::model::{Desired, Drift, KindModel, Observed};
    use crate::plan::{Observation, decide, decide_orphan};
    use crate::state::{Record, Status};
    use crate::value::{Sensitive, Value};

    /// A pure model: what a plan needs of a kind, and nothing async.
    struct Fake;

    impl KindModel for Fake {
        fn name(&self) -> &'static str {
            "PostgresDatabase"
        }
        fn checks_ownership(&self) -> bool {
            true
        }
        fn schema(&self) -> &'static crate::model::Schema {
            Kind::of("PostgresDatabase").model().schema()
        }
        fn immutable_fields(&self) -> &'static [&'static str] {
            &["database"]
        }
        fn drift(&self, desired: &Desired, _: Option<&Record>, observed: &Observed) -> Vec<Drift> {
            match (desired.spec.get("owner"), observed.fields.get("owner")) {
                (Some(want), Some(got)) if want != got => vec![Drift {
                    field: "owner".into(),
                    expected: crate::plan::show(want),
                    found: crate::plan::show(got),
                }],
                _ => Vec::new(),
            }
        }
    }

    fn spec(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<crate::value::Fields>(),
        )
    }

    fn desired(name: &str, spec: Value) -> Desired {
        Desired {
            address: Address::new(Kind::of("PostgresDatabase"), name),
            spec,
            connection: Value::map(),
            timeout: Duration::from_secs(1),
            prevent_destroy: false,
            adopt: false,
            depends_on: Vec::new(),
        }
    }

    fn recorded(name: &str, spec: Value) -> Record {
        let mut r = Record::new(Address::new(Kind::of("PostgresDatabase"), name), 0);
        r.spec_hash = spec.digest(b"k");
        r.spec = spec;
        r.status = Status::Ready;
        r.generation = 1;
        r
    }

    /// Plan one resource per entry: (desired, recorded, observed), then render without colour.
    fn check(entries: Vec<(Option<Desired>, Option<Record>, Observation)>) -> String {
        let mut plan = Plan::default();
        for (d, r, o) in entries {
            match d {
                Some(d) => {
                    let hash = d.spec.digest(b"k");
                    plan.changes.push(decide(&Fake, &d, &hash, r.as_ref(), &o));
                }
                None => {
                    let Some(r) = r else { continue };
                    let (c, e) = decide_orphan(&r);
                    plan.changes.push(c);
                    plan.errors.extend(e);
                }
            }
        }
        plan.changes.sort_by(|a, b| a.address.cmp(&b.address));
        text(&plan, Style { color: false })
    }

    #[test]
    fn an_object_found_outside_state_is_an_error_unless_adopted_and_adopting_shows_what_changes() {
        let mut found = Observed::default();
        found
            .fields
            .insert("owner".into(), Value::Str("someone_else".into()));
        let present = Observation::Present(found);
        let d = desired("a", base());
        let e = crate::plan::ownership_error(&Fake, &d, None, &present).expect("an error");
        assert!(
            e.message
                .starts_with("PostgresDatabase.a already exists outside tend's state")
                && e.message.contains("lifecycle.adopt: true"),
            "{e}"
        );
        assert_eq!(e.address, Some(d.address.clone()));
        assert!(crate::plan::ownership_error(&Fake, &d, None, &Observation::Absent).is_none());

        let mut d = d;
        d.adopt = true;
        assert!(crate::plan::ownership_error(&Fake, &d, None, &present).is_none());
        let out = check(vec![(Some(d), None, present)]);
        assert!(
            out.contains("# PostgresDatabase.a will be adopted"),
            "{out}"
        );
        assert!(out.contains("<= PostgresDatabase.a"), "{out}");
        assert!(out.contains("owner"), "{out}");
        assert!(out.contains("someone_else"), "{out}");
        assert!(
            !out.contains("connection_limit"),
            "only what differs: {out}"
        );
        assert!(
            out.contains("Plan: 1 to adopt, 0 to add, 0 to change, 0 to destroy."),
            "{out}"
        );
    }

    fn base() -> Value {
        spec(&[
            ("database", Value::Str("org_1".into())),
            ("owner", Value::Str("user_1".into())),
            ("connection_limit", Value::Int(10)),
        ])
    }

    #[test]
    fn create_shows_every_field_and_masks_secrets_and_unknowns() {
        let mut s = base();
        s.insert("admin_password", Value::Secret(Sensitive::new("hunter2")));
        s.insert("host", Value::Unknown);
        let out = check(vec![(
            Some(desired("a", s)),
            None,
            Observation::NotRefreshed,
        )]);
        assert!(!out.contains("hunter2"));
        insta::assert_snapshot!(out, @r#"
        tend will perform the following actions:

          # PostgresDatabase.a will be created
          + PostgresDatabase.a {
              + admin_password   = (sensitive)
              + connection_limit = 10
              + database         = "org_1"
              + host             = (known after apply)
              + owner            = "user_1"
            }

        Plan: 1 to add, 0 to change, 0 to destroy.
        "#);
    }

    #[test]
    fn update_shows_old_and_new_and_drift() {
        let mut s = base();
        s.insert("connection_limit", Value::Int(20));
        let obs = Observed {
            fields: [("owner".to_owned(), Value::Str("intruder".into()))]
                .into_iter()
                .collect(),
            ..Observed::default()
        };
        let out = check(vec![
            (
                Some(desired("a", s)),
                Some(recorded("a", base())),
                Observation::NotRefreshed,
            ),
            (
                Some(desired("b", base())),
                Some(recorded("b", base())),
                Observation::Present(obs),
            ),
        ]);
        insta::assert_snapshot!(out, @r#"
        tend will perform the following actions:

          # PostgresDatabase.a will be updated in place
          ~ PostgresDatabase.a {
              ~ connection_limit = 10 -> 20
            }

          # PostgresDatabase.b will be updated in place
          ~ PostgresDatabase.b {
              ~ owner (drift) = "intruder" -> "user_1"
            }

        Plan: 0 to add, 2 to change, 0 to destroy.
        "#);
    }

    #[test]
    fn replace_names_the_field_that_forces_it() {
        let mut s = base();
        s.insert("database", Value::Str("org_2".into()));
        let out = check(vec![(
            Some(desired("a", s)),
            Some(recorded("a", base())),
            Observation::NotRefreshed,
        )]);
        insta::assert_snapshot!(out, @r#"
        tend will perform the following actions:

          # PostgresDatabase.a must be replaced
        -/+ PostgresDatabase.a {
              ~ database = "org_1" -> "org_2" # forces replacement
            }

        Plan: 1 to add, 0 to change, 1 to destroy.
        "#);
    }

    #[test]
    fn destroy_and_protected_destroy() {
        let mut protected = recorded("p", base());
        protected.prevent_destroy = true;
        let out = check(vec![
            (None, Some(recorded("a", base())), Observation::NotRefreshed),
            (None, Some(protected), Observation::NotRefreshed),
        ]);
        insta::assert_snapshot!(out, @r#"
        tend will perform the following actions:

          # PostgresDatabase.a will be destroyed
          # (its manifest was removed)
          - PostgresDatabase.a {
              - connection_limit = 10 -> null
              - database         = "org_1" -> null
              - owner            = "user_1" -> null
            }

          # PostgresDatabase.p will be destroyed
          # (its manifest was removed)
          - PostgresDatabase.p {
              - connection_limit = 10 -> null
              - database         = "org_1" -> null
              - owner            = "user_1" -> null
            }

        Plan: 0 to add, 0 to change, 2 to destroy.

        Error: PostgresDatabase.p has lifecycle.prevent_destroy set, but its manifest was removed: restore it, set prevent_destroy: false and apply, then remove it
        "#);
    }

    #[test]
    fn no_op_and_object_deleted_outside_tend() {
        let out = check(vec![(
            Some(desired("a", base())),
            Some(recorded("a", base())),
            Observation::Present(Observed::default()),
        )]);
        insta::assert_snapshot!(out, @"No changes. Your infrastructure matches the manifests.");
        let out = check(vec![(
            Some(desired("a", base())),
            Some(recorded("a", base())),
            Observation::Absent,
        )]);
        insta::assert_snapshot!(out, @r#"
        tend will perform the following actions:

          # PostgresDatabase.a will be created
          # (deleted outside tend)
          + PostgresDatabase.a {
              + connection_limit = 10
              + database         = "org_1"
              + owner            = "user_1"
            }

        Plan: 1 to add, 0 to change, 0 to destroy.
        "#);
    }

    #[test]
    fn multi_line_values_render_as_a_unified_diff() {
        let mut a = base();
        a.insert(
            "template",
            Value::Str("line one\nline two\nline three\n".into()),
        );
        let mut b = base();
        b.insert(
            "template",
            Value::Str("line one\nline 2\nline three\n".into()),
        );
        let out = check(vec![(
            Some(desired("a", b)),
            Some(recorded("a", a)),
            Observation::NotRefreshed,
        )]);
        insta::assert_snapshot!(out, @r#"
        tend will perform the following actions:

          # PostgresDatabase.a will be updated in place
          ~ PostgresDatabase.a {
              ~ template = <<-EOT
                     line one
                    -line two
                    +line 2
                     line three
                EOT
            }

        Plan: 0 to add, 1 to change, 0 to destroy.
        "#);
    }

    #[test]
    fn a_plan_read_back_from_its_json_renders_the_same() {
        let mut changed = base();
        changed.insert("database", Value::Str("org_2".into()));
        changed.insert("admin_password", Value::Secret(Sensitive::new("hunter2")));
        let mut plan = Plan::default();
        for (d, r) in [
            (desired("a", changed), Some(recorded("a", base()))),
            (desired("b", base()), None),
            (desired("c", base()), Some(recorded("c", base()))),
        ] {
            let hash = d.spec.digest(b"k");
            let obs = Observation::NotRefreshed;
            plan.changes
                .push(decide(&Fake, &d, &hash, r.as_ref(), &obs));
        }
        let mut protected = recorded("p", base());
        protected.prevent_destroy = true;
        let (c, e) = decide_orphan(&protected);
        plan.changes.push(c);
        plan.errors.extend(e);
        plan.warnings
            .push("refresh of PostgresDatabase.c failed".into());
        plan.changes[0].details.push("a detail".into());

        let doc = json(&plan);
        let back = from_json(&doc).expect("the plan JSON reads back");
        // The JSON's errors are their messages: which resource an error is about is the
        // planner's own (it drops a held-back resource's errors), not part of the view.
        let mut expected = plan.clone();
        for e in &mut expected.errors {
            e.address = None;
        }
        assert_eq!(back, expected);
        assert_eq!(json(&back), doc);
        for color in [false, true] {
            let style = Style { color };
            assert_eq!(text(&back, style), text(&plan, style));
        }

        let mut future = doc;
        future["format_version"] = serde_json::json!("2");
        assert!(from_json(&future).is_err(), "an unknown format is refused");
    }
}
