//! What a finished import's failed lines came to, once the failure ledger ([`crate::ledger`]) has recorded them:
//! counts by the server's kind and by class, and the first few messages for the payload row.

const SAMPLES: usize = 3;

/// Line counts by kind and by ledger class, and the first few messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorSummary {
    pub conflicts: i64,
    pub duplicates: i64,
    pub invalid: i64,
    pub samples: Vec<String>,
    /// Lines whose version is at the destination anyway (they count as imported).
    pub benign: i64,
    /// Lines retried automatically later.
    pub transient: i64,
    /// Lines missing at the destination until someone fixes the cause (what `Halt` stops on).
    pub permanent: i64,
}

impl ErrorSummary {
    /// Counts one recorded ledger entry.
    pub(crate) fn add(&mut self, e: &crate::ledger::Entry) {
        use crate::ledger::{Class, Kind};
        match e.kind {
            Kind::Conflict => self.conflicts += 1,
            Kind::Duplicate => self.duplicates += 1,
            _ => self.invalid += 1,
        }
        // An accepted loss failing again does not stop the migration: the operator has decided about it.
        match (e.state, e.class) {
            (crate::ledger::State::Accepted, _) | (_, Class::Benign) => self.benign += 1,
            (_, Class::Transient) => self.transient += 1,
            (_, Class::Permanent) => self.permanent += 1,
        }
        if e.class != Class::Benign && self.samples.len() < SAMPLES {
            self.samples.push(format!("{}: {}", e.describe(), e.message));
        }
    }
}
