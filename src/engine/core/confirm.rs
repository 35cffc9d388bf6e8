//! What a window's export poll means, decided here rather than in the shell so the simulator reaches it: a
//! completion counts only when a second poll, after `AZURE_ExportConfirmSeconds`, agrees (servers can answer
//! 200 and then 202 again), and only with each export file's blob ETag, so the `$import` names the exact file
//! version (reference §11.6). A file on an account the tool does not know, or may not read, goes without an
//! ETag (the import's own checks still guard it: line counts, transaction time, the attempt's token); any other
//! failure to read one is retried on the next poll.

use super::{Action, ExportPoll, Facts};
use crate::state::Job;

/// What looking up one export file's ETag found.
#[derive(Debug, Clone, PartialEq)]
pub enum EtagLookup {
    Found(Option<String>),
    /// The file is on a storage account the tool has no access configured for.
    UnknownAccount,
    /// The account refused the tool (401/403).
    Forbidden,
    /// Anything else (unreachable, 5xx): tried again on the next poll.
    Failed(String),
}

/// The poll the window's decision rests on, or the action that learns what is still missing.
pub fn export_poll(job: &Job, facts: &Facts) -> Result<ExportPoll, Box<Action>> {
    let key = (job.seq, job.attempt);
    let poll = |confirm| {
        Box::new(Action::PollExport {
            job: job.clone(),
            confirm,
        })
    };
    let first = facts.export_polls.get(&key).ok_or_else(|| poll(false))?;
    if !matches!(first, ExportPoll::Done(_)) {
        return Ok(first.clone());
    }
    let second = facts.export_confirms.get(&key).ok_or_else(|| poll(true))?;
    let ExportPoll::Done(manifest) = second else {
        // A completion the second poll does not repeat is no completion yet.
        return Ok(match second {
            ExportPoll::Failed { .. } | ExportPoll::Unreachable(_) => second.clone(),
            _ => ExportPoll::Running,
        });
    };
    let lookups = facts.etags.get(&key).ok_or_else(|| {
        Box::new(Action::ReadEtags {
            seq: job.seq,
            attempt: job.attempt,
            urls: manifest.output.iter().map(|f| f.url.clone()).collect(),
        })
    })?;
    let mut manifest = manifest.clone();
    for (file, lookup) in manifest.output.iter_mut().zip(lookups) {
        file.etag = match lookup {
            EtagLookup::Found(etag) => etag.clone(),
            EtagLookup::UnknownAccount | EtagLookup::Forbidden => None,
            EtagLookup::Failed(e) => {
                return Ok(ExportPoll::Unreachable(format!(
                    "could not read the ETag of export file {}: {e}",
                    crate::telemetry::id_of(&file.url)
                )));
            }
        };
    }
    Ok(ExportPoll::Done(manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::wire::{ExportFile, ExportManifest};

    fn manifest() -> ExportManifest {
        ExportManifest {
            output: vec![
                ExportFile {
                    resource_type: "Patient".into(),
                    url: "https://a/c/Patient-1.ndjson".into(),
                    count: 3,
                    etag: None,
                },
                ExportFile {
                    resource_type: "Patient".into(),
                    url: "https://other/c/Patient-2.ndjson".into(),
                    count: 2,
                    etag: None,
                },
            ],
            transaction_time: None,
            request: None,
            error: Vec::new(),
        }
    }

    #[test]
    fn a_completion_counts_when_a_second_poll_repeats_it_and_with_its_etags() {
        let job = Job::planned(3, chrono::DateTime::UNIX_EPOCH, chrono::DateTime::UNIX_EPOCH, "");
        let mut facts = Facts::default();
        assert!(matches!(
            export_poll(&job, &facts).map_err(|a| *a),
            Err(Action::PollExport { confirm: false, .. })
        ));
        facts
            .export_polls
            .insert((3, job.attempt), ExportPoll::Done(manifest()));
        assert!(matches!(
            export_poll(&job, &facts).map_err(|a| *a),
            Err(Action::PollExport { confirm: true, .. })
        ));
        // The server flapped back to 202: still running.
        facts.export_confirms.insert((3, job.attempt), ExportPoll::Running);
        assert_eq!(export_poll(&job, &facts), Ok(ExportPoll::Running));
        facts
            .export_confirms
            .insert((3, job.attempt), ExportPoll::Done(manifest()));
        let Err(Action::ReadEtags { urls, .. }) = export_poll(&job, &facts).map_err(|a| *a) else {
            panic!("the ETags are read")
        };
        assert_eq!(urls.len(), 2);
        facts.etags.insert(
            (3, job.attempt),
            vec![EtagLookup::Found(Some("\"0x1\"".into())), EtagLookup::UnknownAccount],
        );
        let Ok(ExportPoll::Done(m)) = export_poll(&job, &facts) else {
            panic!("done")
        };
        assert_eq!(m.output[0].etag.as_deref(), Some("\"0x1\""));
        assert_eq!(m.output[1].etag, None);
        // A lookup that failed otherwise is retried on the next poll, never imported without its ETag.
        facts.etags.insert(
            (3, job.attempt),
            vec![EtagLookup::Failed("503".into()), EtagLookup::Forbidden],
        );
        assert!(matches!(export_poll(&job, &facts), Ok(ExportPoll::Unreachable(_))));
    }

    #[test]
    fn a_job_lost_or_unreachable_between_the_two_polls_is_reported_as_the_second_poll_saw_it() {
        let job = Job::planned(3, chrono::DateTime::UNIX_EPOCH, chrono::DateTime::UNIX_EPOCH, "");
        let mut facts = Facts::default();
        facts
            .export_polls
            .insert((3, job.attempt), ExportPoll::Done(manifest()));
        for second in [
            ExportPoll::Failed {
                status: 404,
                diagnostics: "The requested job was not found.".into(),
            },
            ExportPoll::Unreachable("connection reset".into()),
        ] {
            facts.export_confirms.insert((3, job.attempt), second.clone());
            assert_eq!(export_poll(&job, &facts), Ok(second));
        }
    }
}
