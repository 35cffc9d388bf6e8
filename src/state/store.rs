//! Reading and writing the state rows. Every update is conditional on the ETag the row was read with, so two
//! invocations that race on a row cannot both win: the loser gets [`TableError::Conflict`] and re-reads.

use crate::storage::tables::{IfMatch, TableClient, TableError, filter};

use super::rows::{Cursor, Job, Payload, job_key};

#[derive(Clone, Debug)]
pub struct StateStore {
    chunk: TableClient,
    export: TableClient,
    partition_key: String,
    row_key: String,
}

/// The windows not yet committed, with their payloads.
#[derive(Debug, Clone, Default)]
pub struct Active {
    pub jobs: Vec<Job>,
    pub payloads: Vec<Payload>,
}

impl Active {
    /// The payloads of a window's current export attempt.
    pub fn payloads_of<'a>(&'a self, job: &'a Job) -> impl Iterator<Item = &'a Payload> {
        self.payloads
            .iter()
            .filter(move |p| p.seq == job.seq && p.export_attempt == job.attempt)
    }

    pub fn job(&self, seq: i64) -> Option<&Job> {
        self.jobs.iter().find(|j| j.seq == seq)
    }
}

impl StateStore {
    /// The job table's name (operators look rows up there).
    pub fn export_table_name(&self) -> &str {
        self.export.name()
    }

    pub fn new(chunk: TableClient, export: TableClient, partition_key: &str, row_key: &str) -> StateStore {
        StateStore {
            chunk,
            export,
            partition_key: partition_key.to_string(),
            row_key: row_key.to_string(),
        }
    }

    pub async fn ensure_tables(&self) -> Result<(), TableError> {
        self.chunk.create_if_missing().await?;
        self.export.create_if_missing().await
    }

    /// The cursor row, created (empty) on first use.
    pub async fn cursor(&self) -> Result<Cursor, TableError> {
        loop {
            if let Some(e) = self.chunk.get(&self.partition_key, &self.row_key).await? {
                return Ok(Cursor::from_entity(&e));
            }
            match self
                .chunk
                .insert(&Cursor::new().to_entity(&self.partition_key, &self.row_key)?)
                .await
            {
                // Another invocation created it first: read theirs.
                Ok(_) | Err(TableError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the cursor if nobody changed it since it was read; returns it with its new ETag.
    pub async fn save_cursor(&self, cursor: &Cursor) -> Result<Cursor, TableError> {
        let entity = cursor.to_entity(&self.partition_key, &self.row_key)?;
        let etag = match &cursor.etag {
            Some(tag) => self.chunk.replace(&entity, &IfMatch::ETag(tag.clone())).await?,
            None => self.chunk.insert(&entity).await?,
        };
        let mut saved = cursor.clone();
        saved.etag = Some(etag);
        Ok(saved)
    }

    /// Inserts a new window row; [`TableError::AlreadyExists`] when that sequence number is taken.
    pub async fn insert_job(&self, job: &Job) -> Result<Job, TableError> {
        let etag = self
            .export
            .insert(&job.to_entity(&self.partition_key, &self.row_key)?)
            .await?;
        Ok(Job {
            etag: Some(etag),
            ..job.clone()
        })
    }

    pub async fn job(&self, seq: i64) -> Result<Option<Job>, TableError> {
        let row = self
            .export
            .get(&self.partition_key, &job_key(&self.row_key, seq))
            .await?;
        Ok(row.as_ref().and_then(Job::from_entity))
    }

    /// Replaces a window row read earlier (conditional on its ETag).
    pub async fn save_job(&self, job: &Job) -> Result<Job, TableError> {
        let entity = job.to_entity(&self.partition_key, &self.row_key)?;
        let etag = self.export.replace(&entity, &entity_match(&job.etag)).await?;
        Ok(Job {
            etag: Some(etag),
            ..job.clone()
        })
    }

    /// Inserts a payload row; an existing one (a repaired crash) is returned as stored.
    pub async fn insert_payload(&self, payload: &Payload) -> Result<Payload, TableError> {
        let entity = payload.to_entity(&self.partition_key, &self.row_key)?;
        match self.export.insert(&entity).await {
            Ok(etag) => Ok(Payload {
                etag: Some(etag),
                ..payload.clone()
            }),
            Err(TableError::AlreadyExists { .. }) => {
                let stored = self.export.get(&self.partition_key, entity.row_key()).await?;
                stored
                    .as_ref()
                    .and_then(Payload::from_entity)
                    .ok_or(TableError::NotFound {
                        table: self.export.name().to_string(),
                        partition_key: self.partition_key.clone(),
                        row_key: entity.row_key().to_string(),
                    })
            }
            Err(e) => Err(e),
        }
    }

    pub async fn save_payload(&self, payload: &Payload) -> Result<Payload, TableError> {
        let entity = payload.to_entity(&self.partition_key, &self.row_key)?;
        let etag = self.export.replace(&entity, &entity_match(&payload.etag)).await?;
        Ok(Payload {
            etag: Some(etag),
            ..payload.clone()
        })
    }

    /// Rows of the windows from `committed` up to `next` (inclusive: a planner that crashed after inserting
    /// window `next` but before moving the cursor left it there). A key-range scan, so its cost does not grow
    /// with the migration's history.
    pub async fn active(&self, cursor: &Cursor) -> Result<Active, TableError> {
        let query = format!(
            "{} and RowKey ge {} and RowKey lt {}",
            filter::eq("PartitionKey", &self.partition_key),
            filter::literal(&job_key(&self.row_key, cursor.committed_job)),
            filter::literal(&job_key(&self.row_key, cursor.next_job + 1)),
        );
        let mut active = Active::default();
        for e in self.export.query_all(Some(&query)).await? {
            if e.property_names().any(|p| p == "PayloadIndex") {
                active.payloads.extend(Payload::from_entity(&e));
            } else {
                active.jobs.extend(Job::from_entity(&e));
            }
        }
        active.jobs.sort_by_key(|j| j.seq);
        active.payloads.sort_by_key(|p| (p.seq, p.export_attempt, p.index));
        Ok(active)
    }

    /// The window rows of one re-drive, in order: from its first row on, those it flagged (filtered by the
    /// service, so only what was written since the re-drive is scanned).
    pub async fn redrive_rows(&self, id: i64, next_job: i64) -> Result<Vec<Job>, TableError> {
        // Its rows lie between its first one and the next window to be planned: a key range that does not grow
        // with the history written since.
        let mut jobs = self
            .window_rows(id, next_job.max(id + 1), &format!(" and Redrive eq {id}L"))
            .await?;
        jobs.retain(|j| j.redrive.as_ref().is_some_and(|r| r.id == id));
        jobs.sort_by_key(|j| j.seq);
        Ok(jobs)
    }

    /// Window rows in a sequence range, newest first (status and history views).
    pub async fn jobs_between(&self, from: i64, to: i64) -> Result<Vec<Job>, TableError> {
        let mut jobs = self.window_rows(from, to, "").await?;
        jobs.sort_by_key(|j| std::cmp::Reverse(j.seq));
        Ok(jobs)
    }

    /// The window rows with sequence numbers in `[from, to)`, with `more` added to the query's filter.
    async fn window_rows(&self, from: i64, to: i64, more: &str) -> Result<Vec<Job>, TableError> {
        let query = format!(
            "{} and RowKey ge {} and RowKey lt {}{more}",
            filter::eq("PartitionKey", &self.partition_key),
            filter::literal(&job_key(&self.row_key, from)),
            filter::literal(&job_key(&self.row_key, to)),
        );
        Ok(self
            .export
            .query_all(Some(&query))
            .await?
            .iter()
            .filter_map(Job::from_entity)
            .collect())
    }
}

/// Rows are always read (or inserted) before they are replaced, so they carry an ETag; a row without one is
/// only ever a freshly built value, for which "any version" is the only possible condition.
fn entity_match(etag: &Option<crate::storage::tables::ETag>) -> IfMatch {
    etag.clone().map_or(IfMatch::Any, IfMatch::ETag)
}
