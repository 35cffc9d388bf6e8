//! The engine's side of the failure ledger ([`crate::ledger`]): recording a finished import's refused lines,
//! operators' requests about entries (retry, accept, reopen), and retrying entries (transient ones when due,
//! permanent ones when an operator asks).

pub(crate) mod capacity;
pub(crate) mod files;
pub mod ports;
pub(crate) mod record;
pub mod requests;
pub mod retry;
pub(crate) mod scan;

pub use requests::{RequestError, Selection};
