//! How a verification run's reports fit in one table row: Azure Tables caps a string property at 64 KiB and an
//! entity at 1 MiB, so long reports are split across properties and the one unbounded report (deep) is trimmed.

use super::deep::DeepReport;
use crate::storage::tables::Entity;

/// At most `max` bytes of `text`, cut at a character boundary (server diagnostics can be any length).
pub(super) fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Keeps a deep report within [`DEEP_BUDGET`] characters: passing rows go first, then failing ones from the
/// end; the counts stay exact (the status shows how many rows were left out).
pub(super) fn fit_deep(report: &DeepReport) -> String {
    let mut r = report.clone();
    let mut text = serde_json::to_string(&r).unwrap_or_default();
    if text.len() > DEEP_BUDGET {
        r.rows.retain(|row| row.result != "Pass");
        text = serde_json::to_string(&r).unwrap_or_default();
    }
    while text.len() > DEEP_BUDGET && !r.rows.is_empty() {
        let keep = r.rows.len() * DEEP_BUDGET / text.len();
        r.rows.truncate(keep.min(r.rows.len() - 1));
        text = serde_json::to_string(&r).unwrap_or_default();
    }
    text
}

/// A deep report's share of the run's row; with the surface and full reports (both bounded) the row stays well
/// under the 1 MiB entity limit.
const DEEP_BUDGET: usize = 200_000;
/// Azure Tables caps a string property at 64 KiB, i.e. 32,768 UTF-16 units; pieces stay below that.
const PIECE_UNITS: usize = 30_000;

/// Stores `text` as `name`, `name_1`, `name_2`, … in pieces a table property can hold. The row is always
/// replaced whole, so no stale piece survives a shorter report.
pub(super) fn set_pieces(e: &mut Entity, name: &str, text: &str) {
    let mut pieces = vec![String::new()];
    let mut units = 0;
    for c in text.chars() {
        if units + c.len_utf16() > PIECE_UNITS {
            pieces.push(String::new());
            units = 0;
        }
        units += c.len_utf16();
        pieces.last_mut().expect("never empty").push(c);
    }
    for (i, piece) in pieces.into_iter().enumerate() {
        let key = if i == 0 {
            name.to_string()
        } else {
            format!("{name}_{i}")
        };
        e.set_str(&key, piece);
    }
}

pub(super) fn get_pieces(e: &Entity, name: &str) -> String {
    let mut text = e.get_str(name).unwrap_or_default().to_string();
    for i in 1.. {
        match e.get_str(&format!("{name}_{i}")) {
            Some(piece) => text.push_str(piece),
            None => break,
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reports_are_split_into_pieces_a_table_property_holds_and_joined_back() {
        // Mixed widths: '€' is one UTF-16 unit, '𝄞' two.
        let text: String = "ab€𝄞".repeat(20_000);
        let mut e = Entity::new("p", "r").unwrap();
        set_pieces(&mut e, "Out", &text);
        let names: Vec<_> = e
            .property_names()
            .filter(|n| n.starts_with("Out"))
            .map(str::to_string)
            .collect();
        assert!(names.len() >= 4, "{names:?}");
        for n in &names {
            assert!(e.get_str(n).unwrap().encode_utf16().count() <= PIECE_UNITS);
        }
        assert_eq!(get_pieces(&e, "Out"), text);
        set_pieces(&mut e, "Empty", "");
        assert_eq!(get_pieces(&e, "Empty"), "");
    }

    #[test]
    fn an_oversized_deep_report_keeps_its_failures_and_exact_counts() {
        let row = |i: usize, result: &str| crate::verify::deep::DeepRow {
            resource: "Observation".into(),
            id: format!("{i:0>60}"),
            version_id: "1".into(),
            result: result.into(),
            differences: if result == "Pass" {
                vec![]
            } else {
                vec!["value.x".repeat(20); 10]
            },
            content: "compared".into(),
        };
        let report = DeepReport {
            compared: 1000,
            failed: 300,
            rows: (0..1000)
                .map(|i| row(i, if i % 10 < 3 { "Fail" } else { "Pass" }))
                .collect(),
            passed: false,
        };
        let text = fit_deep(&report);
        assert!(text.len() <= DEEP_BUDGET);
        let back: DeepReport = serde_json::from_str(&text).unwrap();
        assert_eq!((back.compared, back.failed), (1000, 300));
        assert!(!back.rows.is_empty() && back.rows.iter().all(|r| r.result == "Fail"));
    }
}
