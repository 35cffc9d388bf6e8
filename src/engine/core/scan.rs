//! Several versions of one resource on one millisecond. The destination keeps one version per resource and
//! millisecond: its import de-duplicates on (id, lastUpdated) and keeps the version that sorts highest **as
//! text**, so of versions 9 and 10 it keeps 9 and reports 10 as a duplicate (fhir-server
//! `SqlServerFhirDataStore.cs`, `ImportResourcesAsync`; reference §11.2), and a version imported later on a
//! millisecond already taken is a conflict. Left alone, the destination could end with an older version as the
//! resource's current one. So before a payload's first POST the shell reads its export files (a bounded share
//! per action, resumed from the row), keeps the numerically highest version of each such group, leaves the
//! others out of copies of the files and names each in the failure ledger (kind `SameMillisecond`). Versions
//! of one group that fall into two payloads are not seen together; the import then refuses one and the ledger
//! names it, so nothing is silent either way.

use super::flow::payload_container;
use super::rules::{WindowPhase, window_phase};
use super::{Action, Context, Facts, Notes, PayloadKey, Snapshot, Write};
use crate::state::Payload;
use crate::state::rows::ImportStatus;

/// What one scan action did, from the payload's `scanned_files` on.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    /// The payload's input files scanned so far (all of them when `done`).
    pub files: i64,
    pub done: bool,
    /// The payload's body now (a new name when a file was replaced by a copy).
    pub blob: String,
    /// Versions left out by this action.
    pub left_out: u64,
    /// For the log: what was left out, or why the scan stopped short (a file it cannot read is imported as is).
    pub note: String,
}

/// Whether a waiting payload may be posted: scanned, or scans are off. (A payload waits only before its first
/// POST: a claim moves it on for good, so rows posted before scans existed are never held back.)
pub fn ready(ctx: &Context, p: &Payload) -> bool {
    !ctx.settings.scan_export_files || p.scan_done
}

/// Scans the next share of a waiting payload's files, or records what the last share found.
pub fn scan_payloads(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    let (job, p) = snapshot
        .jobs
        .iter()
        .filter(|j| window_phase(j) == WindowPhase::Exported)
        .flat_map(|job| snapshot.payloads_of(job).map(move |p| (job, p)))
        .find(|(_, p)| p.status == ImportStatus::NotStarted && !ready(ctx, p))?;
    let Some(scanned) = facts.scans.get(&(PayloadKey::of(p), p.scanned_files)) else {
        return Some(Action::ScanPayload {
            payload: p.clone(),
            container: payload_container(&job.export_id),
        });
    };
    let mut row = p.clone();
    row.scanned_files = scanned.files;
    row.scan_done = scanned.done;
    row.blob = scanned.blob.clone();
    if let Some(lines) = row.expected_lines {
        row.expected_lines = Some(lines - scanned.left_out as i64);
    }
    row.left_out += scanned.left_out as i64;
    let notes = if scanned.note.is_empty() {
        Notes::default()
    } else {
        Notes::line(format!("Window {} payload {}: {}", job.seq, p.index, scanned.note))
    };
    Some(Action::Write {
        write: Write::Payload(row),
        notes,
    })
}
