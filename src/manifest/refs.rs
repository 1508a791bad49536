//! Value-or-ref syntax: `{value: X}`, `{ref: {kind, name, field_path}}` and `${Kind.name.path}`
//! inside strings. Only `${` followed by a PascalCase kind and a dot is tend's; every other
//! `${…}` (Nomad's, Pulumi's, the shell's) passes through, and `$${` escapes. Pure parsing; which
//! targets and paths exist is checked in `load`.

use super::node::{Node, Pos};

/// A reference to another resource's field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefExpr {
    pub kind: String,
    pub name: String,
    /// e.g. `["status", "outputs", "host"]` or `["spec", "data", "password"]`.
    pub path: Vec<String>,
    pub pos: Pos,
}

impl RefExpr {
    pub fn path_text(&self) -> String {
        self.path.join(".")
    }
}

/// A piece of an interpolated string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Ref(RefExpr),
}

/// What a spec node is, seen through value-or-ref eyes.
pub enum Form<'a> {
    /// `{value: X}`: X, taken as written.
    Value(&'a Node),
    /// `{ref: {...}}`.
    Ref(Result<RefExpr, (Pos, String)>),
    /// Anything else.
    Plain,
}

/// Classify a node: a single-key mapping `value` or `ref` is tend syntax.
pub fn form(node: &Node) -> Form<'_> {
    let Some(entries) = node.as_map() else {
        return Form::Plain;
    };
    match entries {
        [(k, v)] if k.name == "value" => Form::Value(v),
        [(k, v)] if k.name == "ref" => Form::Ref(parse_ref_object(v)),
        _ => Form::Plain,
    }
}

/// The text of a node written as a literal string: plain text or `{value: …}`, with no ref
/// inside (`$${` reads as `${`). `None` for a ref, an interpolation or a non-string, whose value
/// is known only when resolved.
pub fn literal(node: &Node) -> Option<String> {
    let node = match form(node) {
        Form::Value(v) => return v.as_str().map(str::to_owned),
        Form::Ref(_) => return None,
        Form::Plain => node,
    };
    let pieces = parse_template(node.as_str()?, node.pos).ok()?;
    pieces
        .into_iter()
        .map(|p| match p {
            Piece::Lit(s) => Some(s),
            Piece::Ref(_) => None,
        })
        .collect()
}

fn parse_ref_object(node: &Node) -> Result<RefExpr, (Pos, String)> {
    let Some(entries) = node.as_map() else {
        return Err((
            node.pos,
            "`ref` must be a mapping with kind, name and field_path".into(),
        ));
    };
    let (mut kind, mut name, mut path) = (None, None, None);
    for (k, v) in entries {
        let text = v
            .as_str()
            .ok_or_else(|| (v.pos, format!("`ref.{}` must be a string", k.name)))?;
        match k.name.as_str() {
            "kind" => kind = Some(text.to_owned()),
            "name" => name = Some(text.to_owned()),
            "field_path" => path = Some(text.to_owned()),
            other => {
                let hint = super::diag::suggest(other, ["kind", "name", "field_path"])
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err((k.pos, format!("unknown field `{other}` in ref{hint}")));
            }
        }
    }
    let missing = |f: &str| (node.pos, format!("`ref` is missing `{f}`"));
    let path = path.ok_or_else(|| missing("field_path"))?;
    Ok(RefExpr {
        kind: kind.ok_or_else(|| missing("kind"))?,
        name: name.ok_or_else(|| missing("name"))?,
        path: path.split('.').map(str::to_owned).collect(),
        pos: node.pos,
    })
}

fn is_pascal_kind(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && s.chars().any(|c| c.is_ascii_lowercase())
}

/// Split a string into literal text and tend refs.
pub fn parse_template(s: &str, pos: Pos) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$${") {
            lit.push_str("${");
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix("${") {
            let head = after.split(['.', '}']).next().unwrap_or("");
            if is_pascal_kind(head) && after[head.len()..].starts_with('.') {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unterminated `${{{head}.` in string"))?;
                let inner = &after[..end];
                let mut parts = inner.splitn(3, '.');
                let (kind, name, path) = (parts.next(), parts.next(), parts.next());
                let (Some(kind), Some(name), Some(path)) = (kind, name, path) else {
                    return Err(format!(
                        "`${{{inner}}}` must be `${{Kind.name.field.path}}`"
                    ));
                };
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Ref(RefExpr {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    path: path.split('.').map(str::to_owned).collect(),
                    pos,
                }));
                rest = &after[end + 1..];
                continue;
            }
        }
        lit.push('$');
        rest = &rest[1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(s: &str) -> Vec<String> {
        parse_template(s, Pos::default())
            .expect("parses")
            .into_iter()
            .filter_map(|p| match p {
                Piece::Ref(r) => Some(format!("{}.{}.{}", r.kind, r.name, r.path_text())),
                Piece::Lit(_) => None,
            })
            .collect()
    }

    #[test]
    fn tend_refs_are_found_and_everything_else_passes_through() {
        assert_eq!(
            refs("postgres://${PostgresDatabase.org-1.status.outputs.host}:5432"),
            ["PostgresDatabase.org-1.status.outputs.host"]
        );
        for foreign in [
            "${NOMAD_JOB_NAME}",
            "${node.unique.id}",
            "${attr.kernel.name}",
            "${meta.rack}",
            "${env[\"HOME\"]}",
            "${NOMAD_META_x.y}",
            "$HOME and $",
        ] {
            assert_eq!(refs(foreign), Vec::<String>::new(), "{foreign}");
            let pieces = parse_template(foreign, Pos::default()).expect("parses");
            assert_eq!(pieces, vec![Piece::Lit(foreign.to_owned())]);
        }
    }

    #[test]
    fn double_dollar_escapes() {
        let p = parse_template("a$${PostgresDatabase.x.spec.database}b", Pos::default())
            .expect("parses");
        assert_eq!(
            p,
            vec![Piece::Lit("a${PostgresDatabase.x.spec.database}b".into())]
        );
    }

    #[test]
    fn malformed_tend_refs_are_errors() {
        assert!(parse_template("${PostgresDatabase.x", Pos::default()).is_err());
        assert!(parse_template("${PostgresDatabase.x}", Pos::default()).is_err());
    }
}
