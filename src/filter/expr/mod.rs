//! Filter expressions in the style of [AIP-160](https://google.aip.dev/160):
//! a hand-written lexer (tokens carry byte positions) and recursive-descent
//! parser producing a typed [`Node`] tree, checked against the event fields
//! as it is parsed so every error names the byte position where it lies.
//!
//! Grammar (`{ x }` repeats, `[ x ]` is optional; keywords are upper case):
//!
//! ```text
//! expression  = [ conjunction ] EOF
//! conjunction = disjunction { "AND" disjunction }
//! disjunction = term { "OR" term }            (OR binds tighter than AND, as in AIP-160)
//! term        = ( "NOT" | "-" ) term | primary
//! primary     = "(" conjunction ")" | restriction
//! restriction = FIELD comparator value
//! comparator  = "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//! value       = STRING | WORD | [ "-" ] NUMBER | "*"
//! FIELD       = a dotted name such as `actor.id`, or `metadata.KEY` with KEY in [A-Za-z0-9_-]+
//! STRING      = "..." or '...' with escapes \" \' \\ \n \r \t \* \uXXXX
//! WORD        = [A-Za-z0-9_] [A-Za-z0-9_.-]* [ "*" ]   (a NUMBER when it reads as one)
//! ```
//!
//! Semantics: `=` is exact, or a prefix match when the value ends in an
//! unescaped `*` (`action = "user.*"`); `!=` is `NOT =`; `<` `<=` `>` `>=`
//! compare text byte-wise, integers and times numerically; `:` is an ASCII
//! case-insensitive substring match (`field:*` means "present": non-empty
//! text, or a metadata key with a non-null value). Enum fields take their
//! value names (`OUTCOME_FAILURE`), times RFC 3339 strings (compared at
//! microsecond precision). `metadata.KEY` compares typed: a quoted or bare
//! word matches string values, a number matches number values, `true` and
//! `false` match booleans; a missing key matches nothing (so `!=` matches it).
//!
//! One job per file: `catalog` names the fields and resolves a dotted name,
//! `lexer` turns the text into tokens, `parser` turns tokens into a typed
//! tree, and `ast` holds that tree and evaluates it in memory; the sibling
//! module [`super::sql`] compiles it for the database.

mod ast;
mod catalog;
mod lexer;
mod parser;

use std::fmt;

pub use ast::{Comparison, MetadataTest, Node, Test, TextTest};
pub use catalog::{Field, FieldKind, METADATA_FIELD};

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// Deepest nesting of parentheses and negations.
pub const MAX_DEPTH: usize = 32;
/// Most comparisons one expression may hold.
pub const MAX_TERMS: usize = 200;

/// What is wrong with an expression and the byte offset (from 0) where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset into the expression.
    pub position: usize,
    /// What was expected or found there.
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ExprError {}

/// Parses an expression; `Ok(None)` when it is blank (selects everything).
pub fn parse(source: &str) -> Result<Option<Node>, ExprError> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(ExprError {
            position: MAX_EXPRESSION_BYTES,
            message: format!(
                "the expression is {} bytes long, more than the {MAX_EXPRESSION_BYTES} allowed",
                source.len()
            ),
        });
    }
    let tokens = lexer::lex(source)?;
    parser::expression(source, tokens)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn expressions_longer_than_the_limit_are_refused() {
        let long = format!("action = \"{}\"", "x".repeat(MAX_EXPRESSION_BYTES));
        let error = parse(&long).unwrap_err();
        assert_eq!(error.position, MAX_EXPRESSION_BYTES);
        assert!(error.message.contains("more than the 4096 allowed"), "{error}");
        let longest = format!("action = \"{}\"", "x".repeat(MAX_EXPRESSION_BYTES - 11));
        assert!(parse(&longest).is_ok());
    }

    fn valid_expression() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("action = \"user.*\"".to_owned()),
            Just("actor.id:bob".to_owned()),
            Just("outcome = OUTCOME_SUCCESS".to_owned()),
            Just("seq >= 3".to_owned()),
            Just("metadata.k = 1.5".to_owned()),
            Just("occurred_at < \"2026-01-01T00:00:00Z\"".to_owned()),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} AND {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
                inner.clone().prop_map(|a| format!("NOT ({a})")),
                inner.prop_map(|a| format!("({a})")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_strings_never_panic(source in any::<String>()) {
            let _ = parse(&source);
        }

        #[test]
        fn grammar_shaped_strings_never_panic(
            source in r#"[()a-z._*" =!<>:\\-]{0,64}|(NOT |AND |OR |\(|\)|seq|action|metadata\.k|[=<>:!]|"x|\*|-|1|OUTCOME_FAILURE| )*"#,
        ) {
            let _ = parse(&source);
        }

        #[test]
        fn mutated_valid_expressions_never_panic(
            source in valid_expression(),
            cut in any::<prop::sample::Index>(),
            insert in any::<char>(),
        ) {
            prop_assert!(parse(&source).is_ok(), "{source}");
            let mut chars: Vec<char> = source.chars().collect();
            let at = cut.index(chars.len() + 1);
            let mut inserted = chars.clone();
            inserted.insert(at, insert);
            let _ = parse(&inserted.into_iter().collect::<String>());
            if at < chars.len() {
                chars.remove(at);
                let _ = parse(&chars.into_iter().collect::<String>());
            }
        }
    }
}
