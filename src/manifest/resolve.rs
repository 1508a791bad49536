//! Turning a spec [`Node`] into a [`Value`], given a function that looks refs up. Secrets and
//! unknowns propagate through interpolation: a string built from a secret is a secret, a
//! string built from an unknown is unknown. Pure.

use super::node::{Node, NodeValue};
use super::refs::{Form, Piece, RefExpr, form, parse_template};
use crate::value::{Sensitive, Value};

/// Resolve a node. `lookup` answers each ref (the loader has already checked they exist).
pub fn resolve(node: &Node, lookup: &mut dyn FnMut(&RefExpr) -> Value) -> Value {
    match form(node) {
        Form::Value(inner) => literal(inner),
        Form::Ref(Ok(r)) => lookup(&r),
        Form::Ref(Err(_)) => Value::Null,
        Form::Plain => match &node.value {
            NodeValue::Str(s) => interpolate(s, node, lookup),
            NodeValue::Seq(items) => {
                Value::List(items.iter().map(|n| resolve(n, lookup)).collect())
            }
            NodeValue::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), resolve(v, lookup)))
                    .collect::<crate::value::Fields>(),
            ),
            _ => literal(node),
        },
    }
}

/// A node taken as written, with no ref syntax.
pub fn literal(node: &Node) -> Value {
    match &node.value {
        NodeValue::Null => Value::Null,
        NodeValue::Bool(b) => Value::Bool(*b),
        NodeValue::Int(i) => Value::Int(*i),
        NodeValue::Float(f) => Value::Float(*f),
        NodeValue::Str(s) => Value::Str(s.clone()),
        NodeValue::Seq(items) => Value::List(items.iter().map(literal).collect()),
        NodeValue::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), literal(v)))
                .collect(),
        ),
    }
}

fn interpolate(s: &str, node: &Node, lookup: &mut dyn FnMut(&RefExpr) -> Value) -> Value {
    let Ok(pieces) = parse_template(s, node.pos) else {
        return Value::Str(s.to_owned());
    };
    // A string that is exactly one ref takes the ref's value and type.
    if let [Piece::Ref(r)] = pieces.as_slice() {
        return lookup(r);
    }
    let (mut out, mut secret, mut unknown) = (String::new(), false, false);
    for p in &pieces {
        match p {
            Piece::Lit(l) => out.push_str(l),
            Piece::Ref(r) => match lookup(r) {
                Value::Unknown => unknown = true,
                Value::Secret(x) => {
                    secret = true;
                    out.push_str(x.expose());
                }
                v => out.push_str(&v.to_text()),
            },
        }
    }
    if unknown {
        Value::Unknown
    } else if secret {
        Value::Secret(Sensitive::new(out))
    } else {
        Value::Str(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::node::parse_documents;

    fn run(yaml: &str, answer: Value) -> Value {
        let doc = parse_documents(yaml).expect("parses").remove(0);
        resolve(&doc, &mut |_| answer.clone())
    }

    #[test]
    fn a_whole_string_ref_keeps_the_type() {
        assert_eq!(
            run("p: \"${Xy.a.spec.port}\"", Value::Int(5432)).get("p"),
            Some(&Value::Int(5432))
        );
    }

    #[test]
    fn secrets_and_unknowns_taint_interpolated_strings() {
        let v = run(
            "u: \"postgres://a:${Xy.a.spec.pw}@h\"",
            Value::Secret(Sensitive::new("pw")),
        );
        assert!(matches!(v.get("u"), Some(Value::Secret(s)) if s.expose() == "postgres://a:pw@h"));
        let v = run("u: \"h=${Xy.a.status.outputs.host}\"", Value::Unknown);
        assert_eq!(v.get("u"), Some(&Value::Unknown));
    }

    #[test]
    fn value_form_is_literal_and_foreign_syntax_passes() {
        let v = run(
            "a: {value: \"${Xy.a.spec.b}\"}\nb: \"${NOMAD_TASK_DIR}/x\"",
            Value::Int(1),
        );
        assert_eq!(v.get("a"), Some(&Value::Str("${Xy.a.spec.b}".into())));
        assert_eq!(v.get("b"), Some(&Value::Str("${NOMAD_TASK_DIR}/x".into())));
    }
}
