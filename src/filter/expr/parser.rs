//! The parser: a recursive descent over the lexer's tokens that types each
//! comparison against its field as it goes, so every error names the byte
//! position where it lies. The grammar is in the module documentation.

use super::ast::{Comparison, MetadataTest, Node, Test, TextTest};
use super::catalog::{FieldKind, Target, resolve_field};
use super::lexer::{Kind, Token};
use super::{ExprError, MAX_DEPTH, MAX_TERMS};

/// `expression = [ conjunction ] EOF` over the tokens of `source`:
/// `Ok(None)` when there are none.
pub(super) fn expression(source: &str, tokens: Vec<Token>) -> Result<Option<Node>, ExprError> {
    let mut parser = Parser {
        source,
        tokens,
        next: 0,
        depth: 0,
        terms: 0,
    };
    if parser.peek().kind == Kind::End {
        return Ok(None);
    }
    let node = parser.conjunction()?;
    let token = parser.peek();
    if token.kind != Kind::End {
        return Err(parser.unexpected(token, "AND, OR or the end of the expression"));
    }
    Ok(Some(node))
}

/// A recursive-descent parser over the tokens of one expression, counting
/// nesting and comparisons against the limits as it goes.
struct Parser<'a> {
    source: &'a str,
    tokens: Vec<Token>,
    next: usize,
    depth: usize,
    terms: usize,
}

/// A value as written, before it is typed against its field.
enum Literal {
    Quoted { text: String, prefix: bool },
    Word { text: String, prefix: bool },
    Number { text: String, value: f64 },
    Star,
}

impl Literal {
    /// The text as written (with its trailing `*`), for text comparisons
    /// where a star means itself.
    fn literal_text(&self) -> String {
        match self {
            Self::Quoted { text, prefix } | Self::Word { text, prefix } => {
                if *prefix {
                    format!("{text}*")
                } else {
                    text.clone()
                }
            }
            Self::Number { text, .. } => text.clone(),
            Self::Star => "*".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl Operator {
    fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Has => ":",
        }
    }

    fn comparison(self) -> Option<Comparison> {
        match self {
            Self::Eq | Self::Ne => Some(Comparison::Eq),
            Self::Lt => Some(Comparison::Lt),
            Self::Le => Some(Comparison::Le),
            Self::Gt => Some(Comparison::Gt),
            Self::Ge => Some(Comparison::Ge),
            Self::Has => None,
        }
    }
}

impl Parser<'_> {
    fn peek(&self) -> Token {
        let last = self.tokens.len() - 1;
        self.tokens[self.next.min(last)].clone()
    }

    fn advance(&mut self) -> Token {
        let token = self.peek();
        if self.next < self.tokens.len() - 1 {
            self.next += 1;
        }
        token
    }

    fn describe(&self, token: &Token) -> String {
        if token.kind == Kind::End {
            return "the end of the expression".to_owned();
        }
        let text = &self.source[token.start..token.end];
        match text.char_indices().nth(24) {
            Some((cut, _)) => format!("'{}...'", &text[..cut]),
            None => format!("'{text}'"),
        }
    }

    fn unexpected(&self, token: Token, expected: &str) -> ExprError {
        ExprError {
            position: token.start,
            message: format!("expected {expected} but found {}", self.describe(&token)),
        }
    }

    fn enter(&mut self, at: &Token) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError {
                position: at.start,
                message: format!(
                    "the expression nests parentheses and negations more than {MAX_DEPTH} levels deep"
                ),
            });
        }
        Ok(())
    }

    fn conjunction(&mut self) -> Result<Node, ExprError> {
        self.chain(Kind::And, Self::disjunction, Node::And)
    }

    fn disjunction(&mut self) -> Result<Node, ExprError> {
        self.chain(Kind::Or, Self::term, Node::Or)
    }

    /// `operand { keyword operand }`, joined when there are several.
    fn chain(
        &mut self,
        keyword: Kind,
        operand: fn(&mut Self) -> Result<Node, ExprError>,
        join: fn(Vec<Node>) -> Node,
    ) -> Result<Node, ExprError> {
        let mut parts = vec![operand(self)?];
        while self.peek().kind == keyword {
            self.advance();
            parts.push(operand(self)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            join(parts)
        })
    }

    fn term(&mut self) -> Result<Node, ExprError> {
        let token = self.peek();
        if matches!(token.kind, Kind::Not | Kind::Minus) {
            self.advance();
            self.enter(&token)?;
            let inner = self.term()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let token = self.peek();
        if token.kind == Kind::LParen {
            self.advance();
            self.enter(&token)?;
            let inner = self.conjunction()?;
            self.depth -= 1;
            let close = self.peek();
            if close.kind != Kind::RParen {
                return Err(self.unexpected(
                    close,
                    &format!("AND, OR or ')' to close the '(' at {}", token.start),
                ));
            }
            self.advance();
            return Ok(inner);
        }
        self.restriction()
    }

    fn restriction(&mut self) -> Result<Node, ExprError> {
        let token = self.advance();
        let Kind::Word {
            text: name,
            prefix: false,
        } = &token.kind
        else {
            return Err(self.unexpected(token, "a field name such as action or actor.id"));
        };
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(ExprError {
                position: token.start,
                message: format!("the expression has more than {MAX_TERMS} comparisons"),
            });
        }
        let target = resolve_field(name, token.start)?;

        let op_token = self.advance();
        let operator = match op_token.kind {
            Kind::Eq => Operator::Eq,
            Kind::Ne => Operator::Ne,
            Kind::Lt => Operator::Lt,
            Kind::Le => Operator::Le,
            Kind::Gt => Operator::Gt,
            Kind::Ge => Operator::Ge,
            Kind::Has => Operator::Has,
            _ => {
                return Err(self.unexpected(
                    op_token,
                    &format!("an operator (=, !=, <, <=, >, >=, :) after '{name}'"),
                ));
            }
        };

        let value_token = self.advance();
        let literal = self.literal(&value_token, operator)?;
        let test = typed(&target, operator, &op_token, literal, &value_token, name)?;
        Ok(if operator == Operator::Ne {
            Node::Not(Box::new(Node::Test(test)))
        } else {
            Node::Test(test)
        })
    }

    fn literal(&mut self, token: &Token, operator: Operator) -> Result<Literal, ExprError> {
        let expected = || format!("a value after '{}'", operator.symbol());
        match &token.kind {
            Kind::Quoted { text, prefix } => Ok(Literal::Quoted {
                text: text.clone(),
                prefix: *prefix,
            }),
            Kind::Star => Ok(Literal::Star),
            Kind::Word { text, prefix } => {
                if text.starts_with(|c: char| c.is_ascii_digit())
                    && !prefix
                    && let Ok(value) = text.parse::<f64>()
                {
                    if !represents(text, value) {
                        return Err(ExprError {
                            position: token.start,
                            message: format!("the number {text} is out of range"),
                        });
                    }
                    return Ok(Literal::Number {
                        text: text.clone(),
                        value,
                    });
                }
                Ok(Literal::Word {
                    text: text.clone(),
                    prefix: *prefix,
                })
            }
            Kind::Minus => {
                let number = self.advance();
                let value = match &number.kind {
                    Kind::Word { text, prefix: false } if number.start == token.end => text
                        .parse::<f64>()
                        .ok()
                        .filter(|_| text.starts_with(|c: char| c.is_ascii_digit()))
                        .map(|value| (text, value)),
                    _ => None,
                };
                match value {
                    Some((text, value)) if represents(text, value) => Ok(Literal::Number {
                        text: format!("-{text}"),
                        value: -value,
                    }),
                    Some((text, _)) => Err(ExprError {
                        position: token.start,
                        message: format!("the number -{text} is out of range"),
                    }),
                    None => Err(self.unexpected(number, "a number right after '-'")),
                }
            }
            _ => Err(self.unexpected(token.clone(), &expected())),
        }
    }
}

/// Whether `value`, parsed from the literal `text`, is the number the
/// literal says: finite, and not a nonzero literal such as `1e-400` that
/// underflowed to 0 (which would silently compare as 0).
fn represents(text: &str, value: f64) -> bool {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    value.is_finite() && (value != 0.0 || mantissa.chars().all(|c| c == '0' || c == '.'))
}

/// The text test `operator literal` describes on a text value.
fn text_test(operator: Operator, literal: &Literal) -> TextTest {
    match (operator, literal) {
        (Operator::Has, Literal::Star) => TextTest::Present,
        (Operator::Has, literal) => TextTest::Contains(literal.literal_text().to_ascii_lowercase()),
        (Operator::Eq | Operator::Ne, Literal::Star) => TextTest::Prefix(String::new()),
        (
            Operator::Eq | Operator::Ne,
            Literal::Quoted { text, prefix: true } | Literal::Word { text, prefix: true },
        ) => TextTest::Prefix(text.clone()),
        (Operator::Eq | Operator::Ne, literal) => TextTest::Equals(literal.literal_text()),
        (op, literal) => TextTest::Compare(op.comparison().unwrap_or(Comparison::Eq), literal.literal_text()),
    }
}

fn typed(
    target: &Target,
    operator: Operator,
    op_token: &Token,
    literal: Literal,
    token: &Token,
    name: &str,
) -> Result<Test, ExprError> {
    let error = |message: String| ExprError {
        position: token.start,
        message,
    };
    let operator_error = |message: String| ExprError {
        position: op_token.start,
        message,
    };
    let field = match target {
        Target::Metadata(key) => {
            let test = match (&literal, operator.comparison()) {
                (Literal::Star, None) => MetadataTest::Present,
                (Literal::Number { value, .. }, Some(c)) => MetadataTest::Number(c, *value),
                (Literal::Word { text, prefix: false }, Some(c)) if text == "true" || text == "false" => {
                    if c != Comparison::Eq {
                        return Err(operator_error(format!(
                            "booleans compare only with = and !=, not with '{}'",
                            operator.symbol()
                        )));
                    }
                    MetadataTest::Bool(text == "true")
                }
                _ => MetadataTest::Text(text_test(operator, &literal)),
            };
            return Ok(Test::Metadata(key.clone(), test));
        }
        Target::Column(field) => *field,
    };
    match field.kind() {
        FieldKind::Text | FieldKind::Struct => Ok(Test::Text(field, text_test(operator, &literal))),
        FieldKind::Enum => {
            if !matches!(operator, Operator::Eq | Operator::Ne) {
                return Err(operator_error(format!(
                    "{name} takes only = and !=, not '{}'",
                    operator.symbol()
                )));
            }
            let value = match &literal {
                Literal::Quoted { text, prefix: false } | Literal::Word { text, prefix: false } => {
                    field.enum_value(text)
                }
                _ => None,
            };
            value.map(|v| Test::Enum(field, v)).ok_or_else(|| {
                error(format!(
                    "unknown {name} value {}; expected one of {}",
                    describe_literal(&literal),
                    field.enum_values().join(", ")
                ))
            })
        }
        FieldKind::Integer => {
            let Some(comparison) = operator.comparison() else {
                return Err(operator_error(format!(
                    "{name} is an integer and takes =, !=, <, <=, > or >=, not ':'"
                )));
            };
            match &literal {
                Literal::Number { text, .. } => text
                    .parse::<i64>()
                    .map(|v| Test::Number(field, comparison, v))
                    .map_err(|_| error(format!("expected an integer for {name} but found {text}"))),
                other => Err(error(format!(
                    "expected an integer for {name} but found {}",
                    describe_literal(other)
                ))),
            }
        }
        FieldKind::Timestamp => {
            let Some(comparison) = operator.comparison() else {
                return Err(operator_error(format!(
                    "{name} is a time and takes =, !=, <, <=, > or >=, not ':'"
                )));
            };
            let micros = match &literal {
                Literal::Quoted { text, prefix: false } => rfc3339_micros(text),
                _ => None,
            };
            micros.map(|v| Test::Number(field, comparison, v)).ok_or_else(|| {
                error(format!(
                    "expected an RFC 3339 time in quotes such as \"2026-01-01T00:00:00Z\" for {name} but found {}",
                    describe_literal(&literal)
                ))
            })
        }
    }
}

fn describe_literal(literal: &Literal) -> String {
    match literal {
        Literal::Quoted { .. } => format!("{:?}", literal.literal_text()),
        _ => format!("'{}'", literal.literal_text()),
    }
}

/// Unix microseconds of an RFC 3339 time within years 0001 to 9999.
fn rfc3339_micros(text: &str) -> Option<i64> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let timestamp = prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).ok()?,
    };
    crate::convert::timestamp_to_micros(&timestamp, "").ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::expr::{Field, parse};

    fn test(source: &str) -> Test {
        match parse(source) {
            Ok(Some(Node::Test(test))) => test,
            other => panic!("{source}: {other:?}"),
        }
    }

    fn error(source: &str) -> ExprError {
        match parse(source) {
            Err(error) => error,
            Ok(node) => panic!("{source} parsed as {node:?}"),
        }
    }

    #[test]
    fn blank_expressions_select_everything() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("  \t\n"), Ok(None));
    }

    #[test]
    fn values_are_typed_by_their_field() {
        assert_eq!(
            test(r#"action = "user.*""#),
            Test::Text(Field::Action, TextTest::Prefix("user.".into()))
        );
        assert_eq!(
            test("action=user.login"),
            Test::Text(Field::Action, TextTest::Equals("user.login".into()))
        );
        assert_eq!(
            test(r#"action = "a\*""#),
            Test::Text(Field::Action, TextTest::Equals("a*".into()))
        );
        assert_eq!(
            test(r#"actor.email : "ALICE@""#),
            Test::Text(Field::ActorEmail, TextTest::Contains("alice@".into()))
        );
        assert_eq!(test("outcome = OUTCOME_FAILURE"), Test::Enum(Field::Outcome, 3));
        assert_eq!(
            test(r#"actor.type="ACTOR_TYPE_API_KEY""#),
            Test::Enum(Field::ActorType, 2)
        );
        assert_eq!(test("seq >= -3"), Test::Number(Field::Seq, Comparison::Ge, -3));
        assert_eq!(
            test(r#"occurred_at < "1970-01-01T00:00:01.5Z""#),
            Test::Number(Field::OccurredAt, Comparison::Lt, 1_500_000)
        );
        assert_eq!(
            test("metadata.count > 2.5"),
            Test::Metadata("count".into(), MetadataTest::Number(Comparison::Gt, 2.5))
        );
        assert_eq!(
            test("metadata.mfa = true"),
            Test::Metadata("mfa".into(), MetadataTest::Bool(true))
        );
        assert_eq!(
            test(r#"metadata.mfa = "true""#),
            Test::Metadata("mfa".into(), MetadataTest::Text(TextTest::Equals("true".into())))
        );
        assert_eq!(
            test("metadata.x-y:*"),
            Test::Metadata("x-y".into(), MetadataTest::Present)
        );
    }

    #[test]
    fn or_binds_tighter_than_and_and_not_tightest() {
        let a = || Node::Test(Test::Text(Field::Action, TextTest::Equals("a".into())));
        let s = || Node::Test(Test::Text(Field::Source, TextTest::Equals("s".into())));
        let r = || Node::Test(Test::Text(Field::ResourceId, TextTest::Equals("r".into())));
        assert_eq!(
            parse("action = a AND source = s OR resource.id = r").unwrap(),
            Some(Node::And(vec![a(), Node::Or(vec![s(), r()])]))
        );
        assert_eq!(
            parse("(action = a AND source = s) OR NOT resource.id = r").unwrap(),
            Some(Node::Or(vec![
                Node::And(vec![a(), s()]),
                Node::Not(Box::new(r()))
            ]))
        );
        assert_eq!(parse("-action = a").unwrap(), Some(Node::Not(Box::new(a()))));
        assert_eq!(parse("action != a").unwrap(), Some(Node::Not(Box::new(a()))));
    }

    #[test]
    fn errors_name_the_position_and_what_was_expected() {
        let cases = [
            (
                "action =",
                8,
                "expected a value after '=' but found the end of the expression",
            ),
            ("(action = x", 11, "expected AND, OR or ')' to close the '(' at 0"),
            (
                "action = x)",
                10,
                "expected AND, OR or the end of the expression but found ')'",
            ),
            ("outcome = FAILED", 10, "unknown outcome value 'FAILED'"),
            ("occurred_at > \"yesterday\"", 14, "expected an RFC 3339 time"),
            ("seq = \"1\"", 6, "expected an integer for seq"),
            ("action x", 7, "expected an operator"),
            ("seq : 1", 4, "not ':'"),
            ("outcome < OUTCOME_FAILURE", 8, "takes only = and !="),
            ("seq = - 1", 8, "a number right after '-'"),
            ("action = x AND", 14, "expected a field name"),
            ("metadata.flag < true", 14, "booleans compare only"),
        ];
        for (source, position, message) in cases {
            let error = error(source);
            assert_eq!(error.position, position, "{source}: {error}");
            assert!(error.message.contains(message), "{source}: {error}");
        }
    }

    #[test]
    fn nesting_and_comparison_limits_are_enforced() {
        let deep = format!(
            "{}action = x{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(error(&deep).message.contains("levels deep"));
        let ok = format!("{}action = x{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let nots = format!("{}action = x", "NOT ".repeat(MAX_DEPTH + 1));
        assert!(error(&nots).message.contains("levels deep"));
        let many = vec!["seq = 1"; MAX_TERMS + 1].join(" OR ");
        assert!(error(&many).message.contains("more than 200 comparisons"));
    }

    #[test]
    fn numbers_that_cannot_be_represented_are_refused_not_rounded() {
        for text in ["1e999", "-1e999", "1e-400", "-1e-400", "0.5e-330"] {
            let message = error(&format!("metadata.n = {text}")).message;
            assert!(message.contains("out of range"), "{text}: {message}");
        }
        for text in ["0", "0.0", "0e-400", "-0", "1e-300", "2.5", "-7"] {
            assert!(parse(&format!("metadata.n = {text}")).is_ok(), "{text} refused");
        }
    }
}
