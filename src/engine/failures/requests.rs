//! Operators' requests about ledger entries (`failures retry`, `accept`, `reopen`, and ImportFailures_Http): each
//! changes the chosen entries with an ETag-guarded write, so an entry a retry settled meanwhile is left as it is
//! now. The retries themselves are run by the ledger's tick ([`super::retry`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::ports::{LedgerPorts, Work};
use super::record::event;
use crate::engine::Engine;
use crate::ledger::{Entry, State};
use crate::storage::tables::TableError;

/// Which entries an operator's request is about.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every unresolved entry: the open ones, and those queued for a retry (one whose retry import was lost is
    /// queued afresh).
    AllOpen,
    /// These row keys (`Patient|p1|3`, as `failures` lists them).
    Keys(Vec<String>),
}

impl Engine {
    /// Queues entries for a retry (see [`Work::retry_failures`]).
    pub async fn retry_failures(&self, which: &Selection, now: DateTime<Utc>) -> Result<usize, RequestError> {
        Work(self).retry_failures(which, now).await
    }

    /// Accepts the loss of entries (see [`Work::accept_failures`]).
    pub async fn accept_failures(&self, which: &Selection, reason: &str) -> Result<usize, RequestError> {
        Work(self).accept_failures(which, reason).await
    }

    /// Brings accepted entries back (see [`Work::reopen_failures`]).
    pub async fn reopen_failures(&self, which: &Selection) -> Result<usize, RequestError> {
        Work(self).reopen_failures(which).await
    }
}

impl<P: LedgerPorts> Work<'_, P> {
    /// Queues entries for a retry (an operator fixed the cause). Returns how many were queued; keys that name
    /// no entry, or an entry already resolved, are reported in the error.
    /// An accepted entry named by its key is retried too (the operator changed their mind).
    pub async fn retry_failures(&self, which: &Selection, now: DateTime<Utc>) -> Result<usize, RequestError> {
        self.change(which, true, false, |e| {
            // One whose retry import is running is being retried already: that import goes on.
            if !e.retry_import.is_empty() {
                return;
            }
            e.state = State::Retrying;
            e.next_attempt = Some(now);
            // A new count of automatic retries for what the operator asked (after fixing the cause).
            e.attempts = 1;
        })
        .await
    }

    /// Accepts the loss of entries, with the operator's reason (shown in `failures` and cut-over reports).
    pub async fn accept_failures(&self, which: &Selection, reason: &str) -> Result<usize, RequestError> {
        if reason.trim().is_empty() {
            return Err(RequestError::NoReason);
        }
        self.change(which, false, true, |e| {
            e.state = State::Accepted;
            e.resolution = format!("accepted: {}", reason.trim());
            e.retry_import.clear();
        })
        .await
    }

    /// Brings accepted entries back: they block cut-over again, and are open until retried or accepted anew.
    pub async fn reopen_failures(&self, which: &Selection) -> Result<usize, RequestError> {
        let Selection::Keys(keys) = which else {
            return Err(RequestError::NoIds);
        };
        let entries = self.0.ledger_list(Some(State::Accepted)).await?;
        let unknown: Vec<&String> = keys.iter().filter(|k| !entries.iter().any(|e| &e.key == *k)).collect();
        if !unknown.is_empty() {
            return Err(RequestError::NotAccepted(
                unknown.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
            ));
        }
        self.change(which, true, false, |e| {
            e.state = State::Open;
            e.resolution = format!("reopened (was {})", e.resolution);
        })
        .await
    }

    /// Applies `apply` to the chosen entries: every unresolved one, or the named ones (which must be unresolved,
    /// or accepted when `accepted_too`). With `stop_retries`, a retry import running for a chosen entry is
    /// cancelled first (best effort), so no import the ledger no longer follows is left running.
    async fn change(
        &self,
        which: &Selection,
        accepted_too: bool,
        stop_retries: bool,
        apply: impl Fn(&mut Entry),
    ) -> Result<usize, RequestError> {
        let entries = self.0.ledger_list(None).await?;
        let chosen: Vec<Entry> = match which {
            Selection::AllOpen => entries.into_iter().filter(|e| e.state.unresolved()).collect(),
            Selection::Keys(keys) => {
                let by_key: HashMap<&str, &Entry> = entries.iter().map(|e| (e.key.as_str(), e)).collect();
                let eligible = |e: &Entry| e.state.unresolved() || (accepted_too && e.state == State::Accepted);
                let unknown: Vec<&String> = keys
                    .iter()
                    .filter(|k| by_key.get(k.as_str()).is_none_or(|e| !eligible(e)))
                    .collect();
                if !unknown.is_empty() {
                    return Err(RequestError::Unknown(
                        unknown.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
                    ));
                }
                keys.iter()
                    .filter_map(|k| by_key.get(k.as_str()).map(|e| (*e).clone()))
                    .collect()
            }
        };
        let mut changed = 0;
        let mut cancelled = std::collections::HashSet::new();
        for mut e in chosen {
            if stop_retries && !e.retry_import.is_empty() && cancelled.insert(e.retry_import.clone()) {
                // A job that runs on anyway only imports versions again, which changes nothing.
                let _ = self.0.cancel_import(&e.retry_import).await;
            }
            apply(&mut e);
            match self.0.ledger_save(&e).await {
                Ok(()) => {
                    changed += 1;
                    self.0.emit(event(&e));
                }
                // Changed meanwhile (a retry settled it): the operator sees it as it is now in `failures`.
                Err(TableError::Conflict { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(changed)
    }
}

/// Why an operator's request about ledger entries was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no unresolved failure with the key(s) {0}: list them with `failures` (keys look like Patient|p1|3)")]
    Unknown(String),
    #[error("no accepted failure with the key(s) {0}: `failures` lists the accepted ones")]
    NotAccepted(String),
    #[error("name the entries to reopen with their keys (--ids, or \"ids\" for ImportFailures_Http)")]
    NoIds,
    #[error(
        "say why the loss is acceptable (--reason on the command line, \"reason\" for ImportFailures_Http): it is shown in every cut-over report"
    )]
    NoReason,
    #[error(transparent)]
    Table(#[from] TableError),
}
