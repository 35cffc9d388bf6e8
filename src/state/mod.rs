//! The migration's durable state in Table storage: the cursor row and one row per window and per import
//! payload (see [`rows`]); every write is ETag-guarded.

pub mod rows;
