//! The migration's durable state in Table storage: the cursor row and one row per window and per import
//! payload (see [`rows`]); every write is ETag-guarded.

pub mod rows;
pub mod store;

pub use rows::{Cursor, Job, Payload};
pub use store::{Active, StateStore};
