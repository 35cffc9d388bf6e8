//! `fhir-migration-tool verify`: the same checks as a verification run, in this process, with progress on the
//! terminal and a printed (or JSON) report.

use serde_json::{Map, Value};

use super::Content;
use super::deep::{self, DeepReport};
use super::full::{FullReport, compare_type_within};
use super::runs::Checks;
use super::scope::Scope;
use super::surface::{SurfaceReport, surface_in};
use crate::engine::Engine;
use crate::fhir::FhirError;
use crate::terminal::Progress;

/// What the CLI asked for.
pub struct Request {
    pub checks: Checks,
    pub types: Vec<String>,
    pub count: Option<usize>,
    pub include_empty: bool,
}

/// The combined result; `output` has the same shape as a run's status `output`.
pub struct Outcome {
    pub passed: bool,
    pub output: Value,
    pub text: String,
}

pub async fn run(engine: &Engine, request: Request) -> Result<Outcome, FhirError> {
    let m = engine.settings();
    let (src, dst) = (engine.source(), engine.destination());
    let history = m.export_with_history || m.export_with_delete;
    let types = if request.types.is_empty() {
        m.resource_types.clone()
    } else {
        request.types
    };
    let mut output = Map::new();
    // The first line says what is checked: the whole server, or the part the configuration migrates.
    let scope = Scope::of(m);
    let mut text = format!("{}\n", scope.line());
    output.insert("Scope".into(), serde_json::to_value(&scope).unwrap_or_default());
    output.insert("ScopeLine".into(), Value::String(scope.line()));
    let mut passed = true;
    let content = Content::of(m);
    if content == Content::NotComparable && (request.checks.deep || request.checks.full) {
        text.push_str(&format!(
            "content: {} with {}: ids, versions, lastUpdated and counts are compared\n",
            content.label(),
            m.deidentify_config.as_deref().unwrap_or_default()
        ));
        output.insert("Content".into(), Value::String(content.label().into()));
    }

    let mut counts: Option<SurfaceReport> = None;
    if request.checks.surface {
        let mut progress = Progress::new("surface check", None);
        progress.set_message(format!("counting {} types on both servers", types.len()));
        let report = surface_in(src, dst, &types, history, request.include_empty, &scope).await?;
        progress.finish(&format!(
            "{} rows, {}",
            report.rows.len(),
            if report.passed {
                "all equal"
            } else {
                "differences found"
            }
        ));
        passed &= report.passed;
        text.push_str(&format!(
            "{:<32} {:>9} {:>14} {:>14}  result\n",
            "resource", "measure", "source", "destination"
        ));
        for r in &report.rows {
            text.push_str(&format!(
                "{:<32} {:>9} {:>14} {:>14}  {}\n",
                r.resource, r.measure, r.source_count, r.destination_count, r.result
            ));
        }
        output.insert(
            "SurfaceCheck".into(),
            serde_json::to_value(&report.rows).unwrap_or_default(),
        );
        counts = Some(report);
    }
    if request.checks.deep {
        let progress = Progress::new("deep check", None);
        let count = request
            .count
            .unwrap_or(m.deep_check_count as usize)
            .clamp(1, deep::MAX_COUNT);
        let report: DeepReport = if scope.is_whole() {
            deep::check(
                src,
                dst,
                &types,
                counts.as_ref(),
                count,
                &m.deep_check_ignore_paths,
                content,
            )
            .await?
        } else {
            deep::check_in(src, dst, &types, count, &m.deep_check_ignore_paths, content, &scope).await?
        };
        progress.finish(&format!(
            "{} sampled resources compared, {} differ",
            report.compared, report.failed
        ));
        passed &= report.passed;
        text.push_str(&format!(
            "deep check: {} sampled resources compared, {} differ\n",
            report.compared, report.failed
        ));
        for r in report.rows.iter().filter(|r| r.result != "Pass") {
            text.push_str(&format!(
                "  {}/{} version {}: {}\n",
                r.resource,
                r.id,
                r.version_id,
                r.differences.join(", ")
            ));
        }
        output.insert(
            "DeepCheck".into(),
            serde_json::to_value(&report.rows).unwrap_or_default(),
        );
    }
    if request.checks.full {
        let mut report = FullReport {
            content: content.label().into(),
            ..FullReport::default()
        };
        // The source's total from the surface check, when it ran, makes a bar with an ETA.
        let expected = counts.as_ref().and_then(|c| {
            let measure = if history { "versions" } else { "current" };
            c.rows
                .iter()
                .find(|r| r.resource == "Total" && r.measure == measure)
                .map(|r| r.source_count)
        });
        let mut progress = Progress::new("full check", expected);
        for (i, t) in types.iter().enumerate() {
            let total = types.len();
            progress.set_message(format!("type {}/{total} {t}", i + 1));
            let stop = |r: &FullReport| {
                progress.set_position(r.compared);
                false
            };
            compare_type_within(src, dst, t, history, content, scope.millis(), &mut report, stop).await?;
        }
        progress.finish(&format!(
            "{} versions compared, {} differences",
            report.compared,
            report.missing + report.extra + report.different
        ));
        report.passed = report.missing == 0 && report.extra == 0 && report.different == 0;
        passed &= report.passed;
        text.push_str(&format!(
            "full check: {} compared, {} missing at the destination, {} extra at the destination, {} different\n",
            report.compared, report.missing, report.extra, report.different
        ));
        for d in &report.differences {
            text.push_str(&format!(
                "  {:?} {}/{} version {} ({})\n",
                d.kind, d.resource_type, d.id, d.version_id, d.last_updated
            ));
        }
        output.insert("FullCheck".into(), serde_json::to_value(&report).unwrap_or_default());
        // What the failure ledger knows: a missing version the import refused is named there with its reason.
        if let Ok(ledger) = engine.ledger().summary().await {
            if ledger.total > 0 {
                text.push_str(&format!("failure ledger: {} (see `failures`)\n", ledger.line()));
            }
            output.insert(
                "FailureLedger".into(),
                serde_json::to_value(&ledger).unwrap_or_default(),
            );
        }
    }
    Ok(Outcome {
        passed,
        output: Value::Object(output),
        text,
    })
}
