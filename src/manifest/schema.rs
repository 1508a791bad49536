//! The checker that walks a spec against its kind's schema (declared in the kind's model,
//! [`crate::model::Schema`]), collecting every error and every ref. Pure: no I/O, no providers.

use std::sync::Arc;

use super::diag::{Diagnostic, suggest};
use super::node::{Node, NodeValue};
use super::refs::{Form, Piece, RefExpr, form, parse_template};
use crate::model::{Field, Ty};

/// Walks a spec against a schema, appending diagnostics and refs.
pub struct Checker<'a> {
    pub file: &'a Arc<std::path::PathBuf>,
    pub diags: &'a mut Vec<Diagnostic>,
    pub refs: &'a mut Vec<RefExpr>,
}

impl Checker<'_> {
    fn err(&mut self, pos: super::node::Pos, msg: String) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(self.file, pos, msg));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    /// Check a mapping against a list of fields. `what` names it in messages.
    pub fn check_fields(&mut self, node: &Node, fields: &'static [Field], what: &str) {
        let Some(entries) = node.as_map() else {
            self.err(
                node.pos,
                format!("{what} must be a mapping, found {}", node.type_name()),
            );
            return;
        };
        for (key, value) in entries {
            match fields.iter().find(|f| f.name == key.name) {
                Some(field) => self.check_field(field, value, &format!("{what}.{}", key.name)),
                None => {
                    let names = fields.iter().map(|f| f.name);
                    let help = match suggest(&key.name, names) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "valid fields: {}",
                            fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    let d = self.err(key.pos, format!("unknown field `{}` in {what}", key.name));
                    d.help = Some(help);
                }
            }
        }
        for field in fields.iter().filter(|f| f.required) {
            if !entries.iter().any(|(k, _)| k.name == field.name) {
                self.err(
                    node.pos,
                    format!("{what} is missing required field `{}`", field.name),
                );
            }
        }
    }

    fn check_field(&mut self, field: &'static Field, node: &Node, what: &str) {
        if matches!(field.ty, Ty::Opaque) {
            return; // the kind's model checks it
        }
        let node = match form(node) {
            Form::Value(inner) => inner,
            Form::Ref(r) => {
                match r {
                    Ok(r) if field.refs => self.refs.push(r),
                    Ok(r) => {
                        self.err(r.pos, format!("{what} cannot be a ref"));
                    }
                    Err((pos, msg)) => {
                        self.err(pos, msg);
                    }
                }
                return;
            }
            Form::Plain => node,
        };
        match &field.ty {
            Ty::Obj(fields) => self.check_fields(node, fields, what),
            Ty::Any => self.walk_any(node),
            Ty::CredData | Ty::Opaque => {}
            scalar => {
                if let NodeValue::Str(s) = &node.value {
                    let has_refs = self.template(s, node, field.refs, what);
                    if has_refs {
                        return;
                    }
                }
                self.check_scalar(scalar, node, what);
            }
        }
    }

    /// Collect refs of a string; returns whether it had any.
    fn template(&mut self, s: &str, node: &Node, allowed: bool, what: &str) -> bool {
        match parse_template(s, node.pos) {
            Ok(pieces) => {
                let mut any = false;
                for p in pieces {
                    if let Piece::Ref(r) = p {
                        any = true;
                        if allowed {
                            self.refs.push(r);
                        } else {
                            self.err(node.pos, format!("{what} cannot contain a ref"));
                            return true;
                        }
                    }
                }
                any
            }
            Err(msg) => {
                self.err(node.pos, msg);
                true
            }
        }
    }

    fn check_scalar(&mut self, ty: &Ty, node: &Node, what: &str) {
        let ok = match (ty, &node.value) {
            (Ty::Str, NodeValue::Str(_) | NodeValue::Int(_) | NodeValue::Float(_)) => true,
            (Ty::Int, NodeValue::Int(_)) => true,
            (Ty::Int, NodeValue::Str(s)) => s.parse::<i64>().is_ok(),
            (Ty::Bool, NodeValue::Bool(_)) => true,
            (Ty::Duration, NodeValue::Str(s)) => {
                if humantime::parse_duration(s).is_err() {
                    self.err(node.pos, format!("{what}: `{s}` is not a duration"))
                        .help = Some("write it like `90s`, `10m` or `1h30m`".into());
                }
                true
            }
            (Ty::Enum(_) | Ty::Names(_), NodeValue::Str(s)) => {
                let options: Vec<&str> = match ty {
                    Ty::Names(names) => names(),
                    Ty::Enum(options) => options.to_vec(),
                    _ => Vec::new(),
                };
                if !options.contains(&s.as_str()) {
                    let help = match suggest(s, options.iter().copied()) {
                        Some(x) => format!("did you mean `{x}`?"),
                        None => format!("one of: {}", options.join(", ")),
                    };
                    self.err(node.pos, format!("{what}: `{s}` is not a valid value"))
                        .help = Some(help);
                }
                true
            }
            _ => false,
        };
        if !ok {
            let want = match ty {
                Ty::Str => "a string",
                Ty::Int => "an integer",
                Ty::Bool => "true or false",
                Ty::Duration => "a duration",
                Ty::Enum(_) | Ty::Names(_) => "a string",
                _ => "a value",
            };
            self.err(
                node.pos,
                format!("{what} must be {want}, found {}", node.type_name()),
            );
        }
    }

    /// Collect refs anywhere inside an arbitrary tree.
    pub fn walk_any(&mut self, node: &Node) {
        match form(node) {
            Form::Value(_) => {}
            Form::Ref(Ok(r)) => self.refs.push(r),
            Form::Ref(Err((pos, msg))) => {
                self.err(pos, msg);
            }
            Form::Plain => match &node.value {
                NodeValue::Str(s) => {
                    self.template(s, node, true, "value");
                }
                NodeValue::Seq(items) => items.iter().for_each(|n| self.walk_any(n)),
                NodeValue::Map(entries) => entries.iter().for_each(|(_, n)| self.walk_any(n)),
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Kind;
    use crate::manifest::node::parse_documents;

    fn check(kind: &str, yaml: &str) -> (Vec<String>, Vec<String>) {
        let doc = parse_documents(yaml).expect("parses").remove(0);
        let file = Arc::new(std::path::PathBuf::from("t.yaml"));
        let (mut diags, mut refs) = (Vec::new(), Vec::new());
        Checker {
            file: &file,
            diags: &mut diags,
            refs: &mut refs,
        }
        .check_fields(&doc, Kind::of(kind).model().schema().fields, "spec");
        (
            diags
                .iter()
                .map(|d| {
                    format!(
                        "{} {} {}",
                        d.location(),
                        d.message,
                        d.help.clone().unwrap_or_default()
                    )
                })
                .collect(),
            refs.iter()
                .map(|r| format!("{}.{}.{}", r.kind, r.name, r.path_text()))
                .collect(),
        )
    }

    #[test]
    fn unknown_fields_suggest_the_nearest_and_all_errors_are_reported() {
        let (errs, _) = check(
            "PostgresDatabase",
            "server: main\ndatabse: x\non_delete: dorp\nrotation: many\n",
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains("t.yaml:2:1 unknown field `databse` in spec did you mean `database`?"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("`dorp` is not a valid value did you mean `drop`?"),
            "{errs:?}"
        );
        assert!(
            errs[2].contains("spec.rotation must be an integer"),
            "{errs:?}"
        );
    }

    #[test]
    fn refs_are_collected_from_every_form() {
        let (errs, refs) = check(
            "PostgresServer",
            "host: {ref: {kind: X, name: a, field_path: status.outputs.host}}\nuser: {value: admin}\npassword: \"${Credential.pg.spec.data.password}\"\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            refs,
            [
                "X.a.status.outputs.host",
                "Credential.pg.spec.data.password"
            ]
        );
    }

    #[test]
    fn fixed_fields_reject_refs() {
        let (errs, _) = check(
            "PostgresDatabase",
            "server: \"${PostgresServer.a.spec.host}\"\n",
        );
        assert!(
            errs[0].contains("spec.server cannot contain a ref"),
            "{errs:?}"
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let (errs, _) = check("PostgresDatabase", "database: x\n");
        assert!(
            errs[0].contains("missing required field `server`"),
            "{errs:?}"
        );
    }
}
