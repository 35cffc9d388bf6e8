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
                match planner::window_end(&self.settings, since, now) {
                    Some(_) if till > since => (since, till),
                    _ => return Ok(Planned::Nothing),
                }
            }
        };
        let types = &self.settings.resource_types;
        let mut index = cursor.type_index.max(0) as usize;
        let mut part_since = cursor.sub_since;
        while index < types.len() {
            let resource_type = &types[index];
            let start = part_since.unwrap_or(window_since);
            let mut end = window_till;
            let mut count = self.window_count(Some(resource_type), start, end).await?;
            if count == 0 {
                index += 1;
                part_since = None;
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
                |c: &mut Cursor, j: &Job| per_type_position(c, window_since, window_till, index as i64, j.till);
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
