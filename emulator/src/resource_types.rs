//! The FHIR R4 (4.0.1) resource types, from the workspace's shared list.

pub use fhir_r4_types::{R4_TYPES, is_resource_type};
