//! The simulated world's randomness and its fault knobs: a seeded generator, so a schedule replays exactly, and
//! how often each server or storage call misbehaves.

/// A small deterministic generator (splitmix64): no dependency, same numbers for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// How often servers misbehave, in percent per call.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub kick_off_throttled: u64,
    pub kick_off_5xx: u64,
    pub kick_off_unsent: u64,
    pub export_job_fails: u64,
    pub export_job_vanishes: u64,
    /// Exports that never finish on their own (the tool's job timeout must cancel them).
    pub export_job_hangs: u64,
    pub post_throttled: u64,
    /// Polls (export and import status) throttled past the client's own retries: the answer is a 429.
    pub poll_throttled: u64,
    pub post_unsent: u64,
    pub import_job_fails: u64,
    pub import_job_hangs: u64,
    /// An export of more versions than this fails with 413 (reference §2.1: the job record is too large).
    pub export_max_versions: Option<usize>,
    /// The destination holds at most this many versions of one type on one millisecond, counting what it
    /// already holds (reference §11.1: 80,000, scaled down). An import over it fails with the server's 400 after
    /// importing what fits in its other units (§5.4: no rollback), whatever its processing unit.
    pub same_ms_capacity: Option<usize>,
    /// An import with more versions than this on one millisecond fails with the same 400 and imports nothing,
    /// although no type is over the capacity (the server uses that text after repeated SQL conflicts too): the
    /// tool can only retry, then halt with the reason.
    pub id_refusals_over: Option<usize>,
    /// Table storage calls answered 503 before they take effect.
    pub table_unavailable: u64,
    /// Blob reads by the ledger (error files, export files) that fail (storage busy or unreachable).
    pub blob_unavailable: u64,
    /// Table storage writes that take effect but whose answer is a timeout.
    pub table_timeout: u64,
    /// Polls of a finished export that answer 202 again (a flap).
    pub export_flaps: u64,
    /// ETag reads of export files that meet a storage outage (each read in it then fails with a 503 half the
    /// time), or an account that refuses the tool (403: its files are imported without one), per poll. The SDK
    /// retries each read, so what is left is correlated: one file failing alone is for the unit tests.
    pub etag_lookup_fails: u64,
    pub etag_forbidden: u64,
    /// Cancels that cannot reach the server (the job runs on; the tool must cancel it later).
    pub cancel_unreachable: u64,
    /// SearchParameter syncs that fail (windows must not commit past what a sync has covered).
    pub search_parameter_sync_fails: u64,
}

impl super::world::World {
    /// A destination written to by someone else before the migration: `n` resources' current versions (the
    /// oldest, every other one) each have another version on their millisecond there, so importing them is
    /// refused as a conflict early in a schedule, while its faults and crashes run. Returns those versions.
    pub fn clash(&mut self, n: usize) -> Vec<super::world::Version> {
        let mut current: Vec<super::world::Version> = self
            .source
            .iter()
            .filter(|v| {
                !self
                    .source
                    .iter()
                    .any(|o| o.resource == v.resource && o.version > v.version)
            })
            .copied()
            .collect();
        current.sort_by_key(|v| v.at_ms);
        let chosen: Vec<super::world::Version> = current.into_iter().step_by(2).take(n).collect();
        for v in &chosen {
            let other = super::world::Version {
                version: v.version + 100,
                ..*v
            };
            self.destination.insert(other);
            self.foreign.insert(other);
        }
        chosen
    }
}
