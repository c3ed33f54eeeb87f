//! The lexer: splits an expression into tokens that carry their byte
//! positions, unescaping strings and marking a final unescaped `*`.

use super::ExprError;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    LParen,
    RParen,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
    Minus,
    Star,
    And,
    Or,
    Not,
    /// A quoted string, unescaped; `prefix` when it ended in an unescaped `*`
    /// (which `text` then omits).
    Quoted {
        text: String,
        prefix: bool,
    },
    /// A bare word; `prefix` when it ended in `*` (which `text` omits).
    Word {
        text: String,
        prefix: bool,
    },
    End,
}

/// A token and the bytes of the expression it spans.
#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) kind: Kind,
    pub(super) start: usize,
    pub(super) end: usize,
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The tokens of `source`, ending with [`Kind::End`] at its length.
pub(super) fn lex(source: &str) -> Result<Vec<Token>, ExprError> {
    let mut tokens = Vec::new();
    let mut chars = source.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, want: char| {
            chars.next_if(|&(_, c)| c == want).is_some()
        };
        let kind = match c {
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            '=' => Kind::Eq,
            ':' => Kind::Has,
            '-' => Kind::Minus,
            '*' => Kind::Star,
            '<' if next_is(&mut chars, '=') => Kind::Le,
            '<' => Kind::Lt,
            '>' if next_is(&mut chars, '=') => Kind::Ge,
            '>' => Kind::Gt,
            '!' if next_is(&mut chars, '=') => Kind::Ne,
            '!' => {
                return Err(ExprError {
                    position: start,
                    message: "expected '!=' but found '!' alone (negate with NOT)".to_owned(),
                });
            }
            '"' | '\'' => lex_string(start, c, &mut chars)?,
            c if is_word_start(c) => {
                let mut end = start + c.len_utf8();
                while let Some((i, c)) = chars.next_if(|&(_, c)| is_word_char(c)) {
                    end = i + c.len_utf8();
                }
                let prefix = next_is(&mut chars, '*');
                let text = &source[start..end];
                match (text, prefix) {
                    ("AND", false) => Kind::And,
                    ("OR", false) => Kind::Or,
                    ("NOT", false) => Kind::Not,
                    _ => Kind::Word {
                        text: text.to_owned(),
                        prefix,
                    },
                }
            }
            other => {
                return Err(ExprError {
                    position: start,
                    message: format!("unexpected character {other:?}"),
                });
            }
        };
        let end = chars.peek().map_or(source.len(), |&(i, _)| i);
        tokens.push(Token { kind, start, end });
    }
    tokens.push(Token {
        kind: Kind::End,
        start: source.len(),
        end: source.len(),
    });
    Ok(tokens)
}

fn lex_string(
    start: usize,
    quote: char,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<Kind, ExprError> {
    let mut text = String::new();
    let mut prefix = false;
    loop {
        let Some((i, c)) = chars.next() else {
            return Err(ExprError {
                position: start,
                message: format!("unterminated string: expected a closing {quote} before the end"),
            });
        };
        if c == quote {
            return Ok(Kind::Quoted { text, prefix });
        }
        if prefix {
            // The `*` seen last was not the final character after all.
            text.push('*');
            prefix = false;
        }
        match c {
            '*' => prefix = true,
            '\0' => {
                return Err(ExprError {
                    position: i,
                    message: "strings must not contain NUL characters".to_owned(),
                });
            }
            '\\' => {
                let escaped = chars.next().map(|(_, c)| c);
                let unescaped = match escaped {
                    Some('"') => '"',
                    Some('\'') => '\'',
                    Some('\\') => '\\',
                    Some('*') => '*',
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('t') => '\t',
                    Some('u') => {
                        let digits: String = (0..4).filter_map(|_| chars.next().map(|(_, c)| c)).collect();
                        match u32::from_str_radix(&digits, 16).ok().and_then(char::from_u32) {
                            Some(c) if digits.len() == 4 && c != '\0' => c,
                            _ => {
                                return Err(ExprError {
                                    position: i,
                                    message: format!(
                                        "expected four hex digits of a non-NUL character after \\u but found {:?}",
                                        digits
                                    ),
                                });
                            }
                        }
                    }
                    Some(other) => {
                        return Err(ExprError {
                            position: i,
                            message: format!(
                                "unknown escape \\{other}; expected one of \\\" \\' \\\\ \\* \\n \\r \\t \\uXXXX"
                            ),
                        });
                    }
                    None => {
                        return Err(ExprError {
                            position: i,
                            message: format!(
                                "unterminated string: expected a closing {quote} before the end"
                            ),
                        });
                    }
                };
                text.push(unescaped);
            }
            c => text.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<Kind> {
        lex(source).unwrap().into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn strings_are_unescaped_and_a_final_star_marks_a_prefix() {
        let quoted = |text: &str, prefix| Kind::Quoted {
            text: text.into(),
            prefix,
        };
        assert_eq!(kinds(r#""user.*""#), [quoted("user.", true), Kind::End]);
        assert_eq!(kinds(r#""a\*""#), [quoted("a*", false), Kind::End]);
        assert_eq!(kinds(r#"'a*b'"#), [quoted("a*b", false), Kind::End]);
        assert_eq!(kinds(r#""\"\u00e9\n""#), [quoted("\"\u{e9}\n", false), Kind::End]);
    }

    #[test]
    fn tokens_carry_their_byte_positions() {
        let tokens = lex("seq>=-3 AND x*").unwrap();
        let spans: Vec<_> = tokens.iter().map(|t| (t.start, t.end)).collect();
        assert_eq!(
            spans,
            [(0, 3), (3, 5), (5, 6), (6, 7), (8, 11), (12, 14), (14, 14)]
        );
        assert_eq!(
            tokens[5].kind,
            Kind::Word {
                text: "x".into(),
                prefix: true
            }
        );
    }

    #[test]
    fn errors_name_the_position_and_what_was_wrong() {
        let cases = [
            ("action = \"x", 9, "unterminated string"),
            ("action # x", 7, "unexpected character '#'"),
            ("action ! x", 7, "found '!' alone"),
            (r#"a = "\q""#, 5, "unknown escape \\q"),
            (r#"a = "\u12""#, 5, "expected four hex digits"),
            (r#"a = "\u0000""#, 5, "non-NUL"),
            ("a = \"x\0\"", 6, "must not contain NUL"),
        ];
        for (source, position, message) in cases {
            let Err(error) = lex(source) else {
                panic!("{source} lexed");
            };
            assert_eq!(error.position, position, "{source}: {error}");
            assert!(error.message.contains(message), "{source}: {error}");
        }
    }
}
