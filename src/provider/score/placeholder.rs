//! Score placeholders, read as score-go's `framework/substitution.go` reads them: `${a.b.c}`
//! is a placeholder whose parts split at `.` (`\.` keeps a dot inside a part), `$$` is one `$`
//! (so `$${x}` is the text `${x}`), any other `$` is itself, and a `${` with no closing `}` is
//! text. Roots are `metadata` and `resources`; anything else is an error that says to escape it.
//!
//! Pure.

/// One piece of a string with placeholders.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    /// `${metadata.name}` → `["metadata", "name"]`.
    Placeholder(Vec<String>),
}

/// Split `s` into text and placeholders.
pub fn parse(s: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            // `$$` → `$`; `$${…}` → `${…}` (the braces are text).
            text.push('$');
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('{')
            && let Some(end) = inner.find('}')
        {
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Placeholder(split_parts(&inner[..end])));
            rest = &inner[end + 1..];
        } else {
            text.push('$');
            rest = after;
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// score-go's `SplitRefParts`: split at `.`, but `\.` is a dot inside a part.
fn split_parts(inner: &str) -> Vec<String> {
    inner
        .replace("\\.", "\0")
        .split('.')
        .map(|p| p.replace('\0', "."))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph(parts: &[&str]) -> Piece {
        Piece::Placeholder(parts.iter().map(|p| (*p).to_owned()).collect())
    }

    #[test]
    fn placeholders_and_escapes_read_as_score_go_reads_them() {
        assert_eq!(parse("plain"), vec![Piece::Text("plain".into())]);
        assert_eq!(
            parse("postgres://${resources.db.username}@${resources.db.host}/x"),
            vec![
                Piece::Text("postgres://".into()),
                ph(&["resources", "db", "username"]),
                Piece::Text("@".into()),
                ph(&["resources", "db", "host"]),
                Piece::Text("/x".into()),
            ]
        );
        assert_eq!(
            parse("$${not.a.placeholder}"),
            vec![Piece::Text("${not.a.placeholder}".into())]
        );
        assert_eq!(
            parse("cost: $$5 or $5"),
            vec![Piece::Text("cost: $5 or $5".into())]
        );
        assert_eq!(parse("${open"), vec![Piece::Text("${open".into())]);
        assert_eq!(
            parse("${metadata.annotations.example\\.com/team}"),
            vec![ph(&["metadata", "annotations", "example.com/team"])]
        );
    }
}
