//! From an error-file line to the input line it is about. The server names a failed line by its processing
//! unit's start byte and the line's 1-based index among the unit's non-empty lines (reference §5.3:
//! "Failed to process resource at line: 3 with stream start offset: 0"). Which unit owns a line, and how lines
//! are counted, follow the server's `ReadLines` (fhir-server
//! `src/Microsoft.Health.Fhir.Core/Features/Operations/Import/ImportResourceLoader.cs`, reference §11.4): a unit
//! at an offset past the file's start always skips its first line, even one that starts exactly at the offset
//! (the previous unit, which reads while its byte count is at most its size, reads that one); lines end at
//! `\n` or `\r\n`, and only truly empty lines are not counted (a line of spaces is a line).

use serde_json::Value;

/// What one error-file line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLine {
    pub message: String,
    /// `(offset, line)` when the diagnostics name them.
    pub position: Option<(u64, u64)>,
}

/// Parses an error-file line leniently (the server's OperationOutcome has no `issue.code`).
pub fn error_line(text: &str) -> ErrorLine {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let issue = &v["issue"][0];
    let message = issue["details"]["text"]
        .as_str()
        .or(issue["diagnostics"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(300).collect());
    let position = issue["diagnostics"].as_str().and_then(position_of);
    ErrorLine { message, position }
}

/// `…at line: 3 with stream start offset: 10000000` → `(10000000, 3)`.
fn position_of(diagnostics: &str) -> Option<(u64, u64)> {
    let number_after = |marker: &str| -> Option<u64> {
        let rest = &diagnostics[diagnostics.find(marker)? + marker.len()..];
        let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Some((number_after("stream start offset:")?, number_after("at line:")?))
}

/// The `line`-th (1-based) non-empty line of the unit starting at byte `offset` of `file`.
pub fn input_line(file: &[u8], offset: u64, line: u64) -> Option<&[u8]> {
    let offset = usize::try_from(offset).ok()?;
    if offset > file.len() || line == 0 {
        return None;
    }
    let mut rest = &file[offset..];
    if offset > 0 {
        // Always skipped: the tail of a line running across the offset, or a whole line starting at it.
        rest = &rest[rest.iter().position(|&b| b == b'\n')? + 1..];
    }
    let mut lines = rest.split(|&b| b == b'\n').peekable();
    let mut counted = 0;
    while let Some(mut l) = lines.next() {
        // `\r` ends a line only before `\n` (the last piece of a file has no `\n` after it).
        if lines.peek().is_some() {
            l = l.strip_suffix(b"\r").unwrap_or(l);
        }
        if l.is_empty() {
            continue;
        }
        counted += 1;
        if counted == line {
            return Some(l);
        }
    }
    None
}

/// `(resourceType, id, versionId, lastUpdated)` of an NDJSON line.
pub fn identity(line: &[u8]) -> Option<(String, String, String, String)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let text = |p: &Value| p.as_str().unwrap_or_default().to_string();
    Some((
        text(&v["resourceType"]),
        text(&v["id"]),
        text(&v["meta"]["versionId"]),
        text(&v["meta"]["lastUpdated"]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_give_their_message_and_position() {
        let e = error_line(
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","details":{"text":"Failed to import resource with version conflict, resource id: p1, line: 3"},"diagnostics":"Failed to process resource at line: 3 with stream start offset: 20"}]}"#,
        );
        assert!(e.message.starts_with("Failed to import resource with version conflict"));
        assert_eq!(e.position, Some((20, 3)));
        assert_eq!(error_line("not json").position, None);
    }

    #[test]
    fn lines_are_counted_inside_their_unit() {
        let file = b"{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n{\"a\":4}\n";
        assert_eq!(input_line(file, 0, 1), Some(&b"{\"a\":1}"[..]));
        assert_eq!(
            input_line(file, 0, 3),
            Some(&b"{\"a\":3}"[..]),
            "empty lines are not counted"
        );
        // A unit starting inside line 2 owns the lines from line 3 on.
        assert_eq!(input_line(file, 10, 1), Some(&b"{\"a\":3}"[..]));
        // A unit starting exactly at a line's first byte skips that line: the previous unit read it.
        assert_eq!(input_line(file, 8, 1), Some(&b"{\"a\":3}"[..]));
        assert_eq!(
            input_line(file, 16, 1),
            Some(&b"{\"a\":3}"[..]),
            "the empty line is the one skipped"
        );
        assert_eq!(input_line(file, 17, 1), Some(&b"{\"a\":4}"[..]));
        assert_eq!(input_line(file, 0, 9), None);
        assert_eq!(input_line(file, 999, 1), None);
    }

    #[test]
    fn crlf_ends_lines_and_a_line_of_spaces_counts() {
        let file = b"{\"a\":1}\r\n  \r\n\r\n{\"a\":2}\r\n{\"a\":3}";
        assert_eq!(input_line(file, 0, 1), Some(&b"{\"a\":1}"[..]));
        assert_eq!(
            input_line(file, 0, 2),
            Some(&b"  "[..]),
            "whitespace is a line on the server"
        );
        assert_eq!(
            input_line(file, 0, 3),
            Some(&b"{\"a\":2}"[..]),
            "an empty CRLF line is not"
        );
        assert_eq!(
            input_line(file, 0, 4),
            Some(&b"{\"a\":3}"[..]),
            "the last line needs no newline"
        );
        assert_eq!(
            input_line(file, 9, 1),
            Some(&b"{\"a\":2}"[..]),
            "offset on the spaces line: skipped"
        );
    }

    #[test]
    fn identity_reads_type_id_version_and_instant() {
        let line = br#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000+00:00"}}"#;
        assert_eq!(
            identity(line),
            Some((
                "Patient".into(),
                "p1".into(),
                "2".into(),
                "2026-01-01T00:00:00.000+00:00".into()
            ))
        );
    }
}
