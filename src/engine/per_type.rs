//! Per-type mode (`AZURE_IsParallel=false`): each window is exported one resource type at a time
//! (`_type=X`), in the order of `AZURE_ResourceTypes`, skipping types with no data in the window. A type with
//! more than `AZURE_ChunkLimit` resources is split into smaller parts of the window. Progress through the type
//! list is kept on the cursor, so planning resumes mid-list after a restart; the window counts as migrated
//! only once every type's part of it is imported.

use chrono::{DateTime, Utc};

use super::exports::{Planned, per_type_position};
use super::{Engine, EngineError, TickReport};
use crate::fhir::format_instant;
use crate::planner;
use crate::state::{Cursor, Job};
use crate::storage::tables::TableError;

impl Engine {
    pub(crate) async fn plan_per_type(
        &self,
        cursor: &Cursor,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Planned, EngineError> {
        let (window_since, window_till) = match (cursor.global_since, cursor.global_till) {
            (Some(s), Some(t)) => (s, t),
            _ => {
                let Some(since) = self.next_window_start(cursor, report).await? else {
                    return Ok(Planned::Nothing);
                };
                let span = self.settings.chunk_unit.span(self.settings.resource_export_chunk_time);
                let till = (since + span).min(planner::frontier(&self.settings, now));
                match planner::window_end_with(&self.settings, since, now, self.timing.min_tail) {
                    Some(_) if till > since => (since, till),
                    _ => return Ok(Planned::Nothing),
                }
            }
        };
        let types = &self.settings.resource_types;
        let fresh = cursor.global_till.is_none();
        // A split type continues first; then every listed type not yet planned for this window, in list order.
        let mut candidates: Vec<(String, Option<DateTime<Utc>>)> = Vec::new();
        if !fresh && !cursor.type_name.is_empty() && cursor.sub_since.is_some() {
            if types.contains(&cursor.type_name) {
                candidates.push((cursor.type_name.clone(), cursor.sub_since));
            } else {
                report.say(format!(
                    "AZURE_ResourceTypes no longer lists {}; its split window part is dropped",
                    cursor.type_name
                ));
            }
        }
        let done = |t: &String| !fresh && cursor.types_done.contains(t);
        candidates.extend(
            types
                .iter()
                .filter(|t| !done(t) && **t != cursor.type_name)
                .map(|t| (t.clone(), None)),
        );
        for (resource_type, part_since) in &candidates {
            let resource_type = resource_type.as_str();
            let index = types.iter().position(|t| t == resource_type).unwrap_or(0);
            let start = part_since.unwrap_or(window_since);
            let mut end = window_till;
            let mut count = self.window_count(Some(resource_type), start, end).await?;
            if count == 0 {
                continue;
            }
            while count > self.settings.chunk_limit {
                match planner::halve(start, end) {
                    Some(shorter) => {
                        end = shorter;
                        count = self.window_count(Some(resource_type), start, end).await?;
                    }
                    None => break,
                }
            }
            let seq = cursor.next_job;
            let mut job = Job::planned(seq, start, end, resource_type);
            job.lease_until = Some(Utc::now() + self.timing.lease);
            job.window_since = Some(window_since);
            job.window_till = Some(window_till);
            job.type_index = index as i64;
            let advance =
                |c: &mut Cursor, j: &Job| per_type_position(c, types, window_since, window_till, resource_type, j.till);
            let Some(job) = self.record_planned(cursor, job, advance).await? else {
                return Ok(Planned::Nothing);
            };
            report.say(format!(
                "Planned window {seq}: {resource_type} from {} to {} ({count} resources)",
                format_instant(start),
                format_instant(end)
            ));
            return Ok(Planned::Job(Box::new(job)));
        }
        // Every type of this window is planned: the window ends here, and commits once its jobs are imported.
        let mut updated = cursor.clone();
        updated.global_since = None;
        updated.global_till = None;
        updated.type_index = 0;
        updated.sub_since = None;
        updated.type_name.clear();
        updated.types_done.clear();
        updated.planned_till = Some(window_till);
        if updated.since.is_none() {
            updated.since = Some(window_since);
        }
        match self.state.save_cursor(&updated).await {
            Ok(_) => {
                report.say(format!(
                    "All resource types planned for {} to {}",
                    format_instant(window_since),
                    format_instant(window_till)
                ));
                Ok(Planned::Skipped)
            }
            Err(TableError::Conflict { .. }) => Ok(Planned::Nothing),
            Err(e) => Err(e.into()),
        }
    }
}
