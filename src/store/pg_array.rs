//! PostgreSQL array literals (`{1,"a \"b\"",NULL}`), so a batch of rows can
//! travel as one text parameter per column and be `unnest`ed by the server:
//! one statement, prepared once, whatever the batch size.

use std::fmt::{Display, Write as _};

/// An array literal built one element at a time.
pub(super) struct ArrayLiteral {
    text: String,
}

impl ArrayLiteral {
    /// An empty array with room for about `bytes` of elements.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut text = String::with_capacity(bytes + 2);
        text.push('{');
        Self { text }
    }

    fn separate(&mut self) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
    }

    /// Appends a text element (quoted, so any content survives) or NULL.
    pub fn push_text(&mut self, value: Option<&str>) {
        self.separate();
        let Some(value) = value else {
            self.text.push_str("NULL");
            return;
        };
        self.text.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                self.text.push('\\');
            }
            self.text.push(c);
        }
        self.text.push('"');
    }

    /// Appends an element whose `Display` form needs no quoting (numbers,
    /// UUIDs, hex) or NULL.
    pub fn push_plain(&mut self, value: Option<impl Display>) {
        self.separate();
        match value {
            Some(value) => {
                let _ = write!(self.text, "{value}");
            }
            None => self.text.push_str("NULL"),
        }
    }

    /// The literal, for a `$n::text::TYPE[]` parameter.
    pub fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_quoted_escaped_and_null() {
        let mut texts = ArrayLiteral::with_capacity(16);
        texts.push_text(Some("a"));
        texts.push_text(None);
        texts.push_text(Some(r#"say "hi" \ {x,y}"#));
        texts.push_text(Some("NULL"));
        texts.push_text(Some(""));
        assert_eq!(texts.finish(), r#"{"a",NULL,"say \"hi\" \\ {x,y}","NULL",""}"#);

        let mut numbers = ArrayLiteral::with_capacity(8);
        numbers.push_plain(Some(1));
        numbers.push_plain(None::<i64>);
        numbers.push_plain(Some(-7));
        assert_eq!(numbers.finish(), "{1,NULL,-7}");
        assert_eq!(ArrayLiteral::with_capacity(0).finish(), "{}");
    }
}
