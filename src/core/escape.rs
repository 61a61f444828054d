//! Printable forms of strings users control (command names, cgroup names,
//! paths): nothing they choose reaches a terminal or a log line raw.

use std::fmt;

/// Displays a string with control characters, backslashes and other
/// non-printable characters escaped (`\n`, `\x1b`, `\\`, `\u{202e}`), so that
/// it can neither start a line of its own nor send terminal sequences.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x80 && c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c if c.is_control() || is_format_char(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Invisible characters that reorder or hide text (bidi overrides, zero-width).
fn is_format_char(c: char) -> bool {
    matches!(c as u32, 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

/// The escaped form as a `String`.
pub fn escaped(s: &str) -> String {
    Escaped(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        assert_eq!(escaped("a\nFAKE\u{1b}[31mX"), "a\\nFAKE\\x1b[31mX");
        assert_eq!(escaped("tab\there\\"), "tab\\there\\\\");
        assert_eq!(escaped("\u{7f}\u{9b}\u{202e}evil"), "\\x7f\\u{9b}\\u{202e}evil");
        assert_eq!(escaped("node_12~2 é"), "node_12~2 é");
    }
}
