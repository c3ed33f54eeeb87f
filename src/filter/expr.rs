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

use std::fmt;

use crate::entity::audit_event::{self, Column};
use crate::proto::{ActorType, Outcome};

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

/// The value type of a filterable field, as `GetFilterMetadata` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Text: every operator; `*` suffix for prefixes.
    Text,
    /// A protobuf enum: `=` and `!=` with value names.
    Enum,
    /// A time: comparisons with RFC 3339 values.
    Timestamp,
    /// An integer: comparisons with integer values.
    Integer,
    /// `metadata.KEY`: typed comparisons with a top-level key's value.
    Struct,
}

impl FieldKind {
    /// The name `GetFilterMetadata` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "string",
            Self::Enum => "enum",
            Self::Timestamp => "timestamp",
            Self::Integer => "integer",
            Self::Struct => "struct",
        }
    }

    /// The operators a field of this kind takes.
    pub fn operators(self) -> &'static [&'static str] {
        match self {
            Self::Text | Self::Struct => &["=", "!=", "<", "<=", ">", ">=", ":"],
            Self::Enum => &["=", "!="],
            Self::Timestamp | Self::Integer => &["=", "!=", "<", "<=", ">", ">="],
        }
    }
}

/// A column of the event an expression can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `action`
    Action,
    /// `actor.id`
    ActorId,
    /// `actor.type`
    ActorType,
    /// `actor.name`
    ActorName,
    /// `actor.email`
    ActorEmail,
    /// `resource.type`
    ResourceType,
    /// `resource.id`
    ResourceId,
    /// `resource.name`
    ResourceName,
    /// `outcome`
    Outcome,
    /// `source`
    Source,
    /// `reasoning`
    Reasoning,
    /// `request.method`
    RequestMethod,
    /// `request.path`
    RequestPath,
    /// `request.status_code`
    RequestStatusCode,
    /// `request.client_ip`
    RequestClientIp,
    /// `request.user_agent`
    RequestUserAgent,
    /// `request.request_id`
    RequestId,
    /// `occurred_at`
    OccurredAt,
    /// `recorded_at`
    RecordedAt,
    /// `seq`
    Seq,
}

/// Name under which `metadata.KEY` is described.
pub const METADATA_FIELD: &str = "metadata";

impl Field {
    /// Every field, in the order `GetFilterMetadata` lists them.
    pub const ALL: [Field; 20] = [
        Self::Seq,
        Self::OccurredAt,
        Self::RecordedAt,
        Self::Action,
        Self::ActorId,
        Self::ActorType,
        Self::ActorName,
        Self::ActorEmail,
        Self::ResourceType,
        Self::ResourceId,
        Self::ResourceName,
        Self::Outcome,
        Self::Source,
        Self::Reasoning,
        Self::RequestMethod,
        Self::RequestPath,
        Self::RequestStatusCode,
        Self::RequestClientIp,
        Self::RequestUserAgent,
        Self::RequestId,
    ];

    /// The dotted name used in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::ActorId => "actor.id",
            Self::ActorType => "actor.type",
            Self::ActorName => "actor.name",
            Self::ActorEmail => "actor.email",
            Self::ResourceType => "resource.type",
            Self::ResourceId => "resource.id",
            Self::ResourceName => "resource.name",
            Self::Outcome => "outcome",
            Self::Source => "source",
            Self::Reasoning => "reasoning",
            Self::RequestMethod => "request.method",
            Self::RequestPath => "request.path",
            Self::RequestStatusCode => "request.status_code",
            Self::RequestClientIp => "request.client_ip",
            Self::RequestUserAgent => "request.user_agent",
            Self::RequestId => "request.request_id",
            Self::OccurredAt => "occurred_at",
            Self::RecordedAt => "recorded_at",
            Self::Seq => "seq",
        }
    }

    /// The field with this dotted name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Its value type.
    pub fn kind(self) -> FieldKind {
        match self {
            Self::ActorType | Self::Outcome => FieldKind::Enum,
            Self::OccurredAt | Self::RecordedAt => FieldKind::Timestamp,
            Self::Seq | Self::RequestStatusCode => FieldKind::Integer,
            _ => FieldKind::Text,
        }
    }

    /// For enum fields, the accepted value names in number order.
    pub fn enum_values(self) -> Vec<&'static str> {
        match self {
            Self::ActorType => (0..)
                .map_while(|v| ActorType::try_from(v).ok())
                .map(|v| v.as_str_name())
                .collect(),
            Self::Outcome => (0..)
                .map_while(|v| Outcome::try_from(v).ok())
                .map(|v| v.as_str_name())
                .collect(),
            _ => Vec::new(),
        }
    }

    fn enum_value(self, name: &str) -> Option<i32> {
        match self {
            Self::ActorType => ActorType::from_str_name(name).map(|v| v as i32),
            Self::Outcome => Outcome::from_str_name(name).map(|v| v as i32),
            _ => None,
        }
    }

    /// The column holding the field.
    pub fn column(self) -> Column {
        match self {
            Self::Action => Column::Action,
            Self::ActorId => Column::ActorId,
            Self::ActorType => Column::ActorType,
            Self::ActorName => Column::ActorName,
            Self::ActorEmail => Column::ActorEmail,
            Self::ResourceType => Column::ResourceType,
            Self::ResourceId => Column::ResourceId,
            Self::ResourceName => Column::ResourceName,
            Self::Outcome => Column::Outcome,
            Self::Source => Column::Source,
            Self::Reasoning => Column::Reasoning,
            Self::RequestMethod => Column::RequestMethod,
            Self::RequestPath => Column::RequestPath,
            Self::RequestStatusCode => Column::RequestStatusCode,
            Self::RequestClientIp => Column::RequestClientIp,
            Self::RequestUserAgent => Column::RequestUserAgent,
            Self::RequestId => Column::RequestId,
            Self::OccurredAt => Column::OccurredAt,
            Self::RecordedAt => Column::RecordedAt,
            Self::Seq => Column::Seq,
        }
    }

    /// The stored text of a text field of `event`.
    pub fn text(self, event: &audit_event::Model) -> Option<&str> {
        let value = match self {
            Self::Action => &event.action,
            Self::ActorId => &event.actor_id,
            Self::ActorName => &event.actor_name,
            Self::ActorEmail => &event.actor_email,
            Self::ResourceType => &event.resource_type,
            Self::ResourceId => &event.resource_id,
            Self::ResourceName => &event.resource_name,
            Self::Source => &event.source,
            Self::Reasoning => &event.reasoning,
            Self::RequestMethod => &event.request_method,
            Self::RequestPath => &event.request_path,
            Self::RequestClientIp => &event.request_client_ip,
            Self::RequestUserAgent => &event.request_user_agent,
            Self::RequestId => &event.request_id,
            _ => return None,
        };
        value.as_deref()
    }

    /// The stored number of an enum, integer or time field of `event`.
    pub fn number(self, event: &audit_event::Model) -> Option<i64> {
        match self {
            Self::ActorType => event.actor_type.map(i64::from),
            Self::Outcome => event.outcome.map(i64::from),
            Self::RequestStatusCode => event.request_status_code.map(i64::from),
            Self::OccurredAt => event.occurred_at,
            Self::RecordedAt => Some(event.recorded_at),
            Self::Seq => Some(event.seq),
            _ => None,
        }
    }
}

/// An ordering comparison (`!=` is parsed as `NOT =`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Comparison {
    /// Whether `left` compares to `right` this way.
    pub fn holds<T: PartialOrd + ?Sized>(self, left: &T, right: &T) -> bool {
        match self {
            Self::Eq => left == right,
            Self::Lt => left < right,
            Self::Le => left <= right,
            Self::Gt => left > right,
            Self::Ge => left >= right,
        }
    }
}

/// A test of a text value.
#[derive(Debug, Clone, PartialEq)]
pub enum TextTest {
    /// Equal to the string.
    Equals(String),
    /// Starts with the string (`= "user.*"`).
    Prefix(String),
    /// Compares byte-wise (`<`, `<=`, `>`, `>=`).
    Compare(Comparison, String),
    /// Contains the string, ASCII case-insensitively; held lower-cased.
    Contains(String),
    /// Present: non-empty text, or a metadata string (`:*`).
    Present,
}

impl TextTest {
    /// Whether `value` passes.
    pub fn holds(&self, value: &str) -> bool {
        match self {
            Self::Equals(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Compare(c, s) => c.holds(value, s.as_str()),
            Self::Contains(s) => value.to_ascii_lowercase().contains(s.as_str()),
            Self::Present => !value.is_empty(),
        }
    }
}

/// A test of a top-level metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataTest {
    /// A string value passing the text test.
    Text(TextTest),
    /// A number value comparing to this number.
    Number(Comparison, f64),
    /// A boolean value equal to this one.
    Bool(bool),
    /// Any non-null value (`metadata.KEY:*`).
    Present,
}

/// One comparison of an expression, typed against its field.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// A text field.
    Text(Field, TextTest),
    /// An enum field equal to this value number.
    Enum(Field, i32),
    /// An integer or time (unix microseconds) field.
    Number(Field, Comparison, i64),
    /// A top-level metadata key.
    Metadata(String, MetadataTest),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Every part holds.
    And(Vec<Node>),
    /// Some part holds.
    Or(Vec<Node>),
    /// The part does not hold.
    Not(Box<Node>),
    /// A comparison.
    Test(Test),
}

impl Node {
    /// Whether `event` satisfies the expression, evaluated in memory with
    /// exactly the semantics the database applies to the compiled form.
    pub fn matches(&self, event: &audit_event::Model) -> bool {
        match self {
            Self::And(parts) => parts.iter().all(|p| p.matches(event)),
            Self::Or(parts) => parts.iter().any(|p| p.matches(event)),
            Self::Not(part) => !part.matches(event),
            Self::Test(test) => test.matches(event),
        }
    }
}

impl Test {
    /// Whether `event` passes this comparison.
    pub fn matches(&self, event: &audit_event::Model) -> bool {
        match self {
            Self::Text(field, test) => field.text(event).is_some_and(|v| test.holds(v)),
            Self::Enum(field, value) => field.number(event) == Some(i64::from(*value)),
            Self::Number(field, comparison, value) => {
                field.number(event).is_some_and(|v| comparison.holds(&v, value))
            }
            Self::Metadata(key, test) => {
                let value = event.metadata.as_ref().and_then(|m| m.get(key.as_str()));
                let Some(value) = value else {
                    return false;
                };
                match test {
                    MetadataTest::Text(test) => value.as_str().is_some_and(|v| test.holds(v)),
                    MetadataTest::Number(comparison, number) => value
                        .as_f64()
                        .filter(|_| value.is_number())
                        .is_some_and(|v| comparison.holds(&v, number)),
                    MetadataTest::Bool(b) => value.as_bool() == Some(*b),
                    MetadataTest::Present => !value.is_null(),
                }
            }
        }
    }
}

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
    let tokens = lex(source)?;
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

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Kind {
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

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn lex(source: &str) -> Result<Vec<Token>, ExprError> {
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

// ---------------------------------------------------------------- parser

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

/// What a field name refers to.
enum Target {
    Column(Field),
    Metadata(String),
}

fn resolve_field(name: &str, position: usize) -> Result<Target, ExprError> {
    if let Some(field) = Field::parse(name) {
        return Ok(Target::Column(field));
    }
    if let Some(key) = name.strip_prefix("metadata.") {
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ExprError {
                position,
                message: format!(
                    "metadata key '{key}' is not filterable: keys may hold only letters, digits, '_' and '-'"
                ),
            });
        }
        return Ok(Target::Metadata(key.to_owned()));
    }
    let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
    Err(ExprError {
        position,
        message: format!(
            "unknown field '{name}'; expected one of {}, metadata.KEY",
            names.join(", ")
        ),
    })
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
    use proptest::prelude::*;

    use super::*;

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
            ("acton = x", 0, "unknown field 'acton'"),
            ("(action = x", 11, "expected AND, OR or ')' to close the '(' at 0"),
            (
                "action = x)",
                10,
                "expected AND, OR or the end of the expression but found ')'",
            ),
            ("outcome = FAILED", 10, "unknown outcome value 'FAILED'"),
            ("occurred_at > \"yesterday\"", 14, "expected an RFC 3339 time"),
            ("seq = \"1\"", 6, "expected an integer for seq"),
            ("action = \"x", 9, "unterminated string"),
            ("action # x", 7, "unexpected character '#'"),
            ("action x", 7, "expected an operator"),
            ("seq : 1", 4, "not ':'"),
            ("outcome < OUTCOME_FAILURE", 8, "takes only = and !="),
            ("seq = - 1", 8, "a number right after '-'"),
            ("metadata.a.b = 1", 0, "keys may hold only"),
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
    fn limits_are_enforced() {
        let long = format!("action = \"{}\"", "x".repeat(MAX_EXPRESSION_BYTES));
        assert!(error(&long).message.contains("more than the 4096 allowed"));
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
