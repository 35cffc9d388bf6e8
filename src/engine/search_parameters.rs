//! The copy of custom SearchParameters (`$import` refuses them, reference §4.2): every page of the source's list
//! (the original read only the first 1,000), PUT by id so ids are kept, unchanged ones skipped. A failure is
//! reported and retried on the next tick; it never blocks the data migration.

use super::Engine;
use crate::fhir::FhirError;

fn without_meta(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("meta");
        map.remove("text");
    }
    v
}

impl Engine {
    /// Copies every custom SearchParameter that differs at the destination: (written, already present).
    pub(crate) async fn copy_custom_search_parameters(&self) -> Result<(i64, i64), FhirError> {
        let mut copied = 0i64;
        let mut unchanged = 0i64;
        for sp in self.source.search_parameters().await? {
            let id = sp["id"].as_str().unwrap_or_default().to_string();
            let existing = self.destination.read("SearchParameter", &id).await?;
            if existing.as_ref().map(without_meta) == Some(without_meta(&sp)) {
                unchanged += 1;
                continue;
            }
            let mut body = sp.clone();
            if let Some(map) = body.as_object_mut() {
                map.remove("meta");
            }
            self.destination.put(&body).await?;
            copied += 1;
        }
        Ok((copied, unchanged))
    }
}
