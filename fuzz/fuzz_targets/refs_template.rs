//! Fuzz target `refs_template`: arbitrary text through tend's ref syntax
//! (`tend::manifest::refs`): `parse_template` on the whole input as an interpolated string,
//! and, when the input is a YAML text, `form` and `literal` on every node of every document
//! (the `{value: …}` / `{ref: {kind, name, field_path}}` objects and `${Kind.name.path}`
//! strings). Errors are fine; a panic is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tend::manifest::Via;
use tend::manifest::node::{Node, NodeValue, Pos, parse_documents};
use tend::manifest::refs::{Form, Piece, form, literal, parse_template};

/// Every node under `node`, classified the way the loader and the resolver see it.
fn walk(node: &Node) {
    match form(node) {
        Form::Value(v) => walk(v),
        Form::Ref(Ok(r)) => {
            let _ = Via::of_ref(&r).to_string();
        }
        Form::Ref(Err(_)) => {}
        Form::Plain => {}
    }
    let _ = literal(node);
    match &node.value {
        NodeValue::Str(s) => template(s, node.pos),
        NodeValue::Seq(items) => items.iter().for_each(walk),
        NodeValue::Map(entries) => entries.iter().for_each(|(_, v)| walk(v)),
        _ => {}
    }
}

fn template(s: &str, pos: Pos) {
    let Ok(pieces) = parse_template(s, pos) else {
        return;
    };
    assert!(
        !pieces.is_empty(),
        "a template has at least one piece: {s:?}"
    );
    for p in &pieces {
        match p {
            Piece::Lit(_) => {}
            Piece::Ref(r) => {
                assert!(s.contains(&r.kind), "a ref's kind was written: {s:?}");
                let _ = Via::of_ref(r).to_string();
            }
        }
    }
    // Without a `$`, a string is one literal piece, itself.
    if !s.contains('$') {
        assert_eq!(pieces, vec![Piece::Lit(s.to_owned())]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    template(s, Pos::default());
    if let Ok(docs) = parse_documents(s) {
        docs.iter().for_each(walk);
    }
});
