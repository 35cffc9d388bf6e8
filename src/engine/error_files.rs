//! Reading `$import` error files (reference §5.3) to tell conflicts, duplicates and invalid resources apart,
//! so an operator sees what failed and why instead of a bare count.

use super::Engine;

/// Error files larger than this (in total) are counted by the server's numbers only.
const MAX_BYTES: usize = 256 * 1024 * 1024;
const SAMPLES: usize = 3;

/// Line counts by kind, and the first few messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorSummary {
    pub conflicts: i64,
    pub duplicates: i64,
    pub invalid: i64,
    pub samples: Vec<String>,
}

/// Sorts one error line (an OperationOutcome without `issue.code`; parsed leniently).
pub fn classify(line: &str, summary: &mut ErrorSummary) {
    let text = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            v["issue"][0]["details"]["text"]
                .as_str()
                .or(v["issue"][0]["diagnostics"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| line.chars().take(300).collect());
    if text.contains("version conflict") {
        summary.conflicts += 1;
    } else if text.contains("duplicate") {
        summary.duplicates += 1;
    } else {
        summary.invalid += 1;
    }
    if summary.samples.len() < SAMPLES {
        summary.samples.push(text);
    }
}

impl Engine {
    /// Reads every error file it can reach; `None` when any file is on an account the tool cannot read.
    pub(crate) async fn summarize_errors(&self, urls: &[&str]) -> Option<ErrorSummary> {
        let mut summary = ErrorSummary::default();
        let mut total = 0;
        for url in urls {
            let parsed = url::Url::parse(url).ok()?;
            let (store, (container, name)) = self
                .error_stores
                .iter()
                .find_map(|s| s.locate(&parsed).map(|loc| (s, loc)))?;
            let bytes = match store.get(&container, &name).await {
                Ok(Some(b)) => b,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!("could not read the import error file {container}/{name}: {e}");
                    return None;
                }
            };
            total += bytes.len();
            if total > MAX_BYTES {
                return None;
            }
            for line in String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
            {
                classify(line, &mut summary);
            }
        }
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_sorted_by_kind_leniently() {
        let mut s = ErrorSummary::default();
        for line in [
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","details":{"text":"Failed to import resource with version conflict, resource id: p1, line: 3"},"diagnostics":"Failed to process resource at line: 3 with stream start offset: 0"}]}"#,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","details":{"text":"Failed to import duplicate resource, resource id: p2, line: 4"}}]}"#,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","details":{"text":"Resource type not match."}}]}"#,
            "not json at all",
        ] {
            classify(line, &mut s);
        }
        assert_eq!((s.conflicts, s.duplicates, s.invalid), (1, 1, 2));
        assert_eq!(s.samples.len(), 3);
        assert!(s.samples[0].contains("version conflict"));
    }
}
