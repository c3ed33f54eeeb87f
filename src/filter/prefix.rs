//! Prefix matching: `value*` in a filter field or `startsWith` in an
//! expression becomes a range on the column, so both databases use the
//! index.

use sea_orm::{ColumnTrait, Condition};

/// `column` matches `value` exactly, or starts with it when it ends in `*`.
/// A prefix becomes a range so both databases use the index.
pub fn exact_or_prefix(column: impl ColumnTrait, value: &str) -> Condition {
    match value.strip_suffix('*') {
        Some(prefix) => match prefix_upper_bound(prefix) {
            Some(upper) => Condition::all().add(column.gte(prefix)).add(column.lt(upper)),
            None => Condition::all().add(column.gte(prefix)),
        },
        None => Condition::all().add(column.eq(value)),
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (in byte order, which is code point order), or `None` when there is none.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next code point, skipping the surrogate gap; past U+10FFFF
        // there is none and the previous character is bumped instead.
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            _ => char::from_u32(last as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bound_is_the_next_string() {
        assert_eq!(prefix_upper_bound("user."), Some("user/".to_owned()));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("a\u{D7FF}"), Some("a\u{E000}".to_owned()));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}"), Some("b".to_owned()));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}
