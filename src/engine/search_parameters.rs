//! The one-time copy of custom SearchParameters (`$import` refuses them, reference §4.2): every page of the
//! source's list (the original read only the first 1,000), PUT by id so ids are kept, unchanged ones skipped.
//! A failure is reported and retried on the next tick; it never blocks the data migration.

use super::{Engine, EngineError, TickReport};
use crate::state::Cursor;
use crate::storage::tables::TableError;

fn without_meta(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("meta");
        map.remove("text");
    }
    v
}

impl Engine {
    pub(crate) async fn copy_search_parameters(
        &self,
        cursor: Cursor,
        report: &mut TickReport,
    ) -> Result<Cursor, EngineError> {
        let outcome = async {
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
            Ok::<_, crate::fhir::FhirError>((copied, unchanged))
        }
        .await;
        match outcome {
            Ok((copied, unchanged)) => {
                let mut updated = cursor.clone();
                updated.search_parameters_copied = true;
                updated.search_parameter_count = copied + unchanged;
                report.say(format!(
                    "Custom SearchParameters copied: {copied} written, {unchanged} already present. Run $reindex on the destination once the migration is complete."
                ));
                match self.state.save_cursor(&updated).await {
                    Ok(saved) => Ok(saved),
                    Err(TableError::Conflict { .. }) => Ok(self.state.cursor().await?),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => {
                report.say(format!(
                    "Copying custom SearchParameters failed (retried next tick; data migration continues): {e}"
                ));
                Ok(cursor)
            }
        }
    }
}
