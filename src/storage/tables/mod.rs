//! A small client for the Azure Table storage REST API (works against Azure and Azurite).
//!
//! No maintained Rust crate covers Tables (the 0.21 `azure_data_tables` line is frozen and logs credentials),
//! so this module speaks the protocol directly: create-table-if-missing, insert, get, replace and merge guarded
//! by `If-Match`, delete, and filtered queries with continuation paging. A stale ETag surfaces as
//! [`TableError::Conflict`], which is how the engine detects that another invocation got there first.

mod entity;
mod error;
mod request;

pub use entity::{ETag, Entity, IfMatch};
pub use error::TableError;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use self::request::Sender;
use super::{StorageCredential, encode_component};

/// A handle on one storage account's Table service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TableService {
    sender: Sender,
}

impl TableService {
    /// `endpoint` is the service base: `https://<account>.table.core.windows.net` or, for Azurite,
    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub fn new(endpoint: Url, credential: StorageCredential, http: reqwest::Client) -> TableService {
        TableService {
            sender: Sender::new(endpoint, credential, http),
        }
    }

    /// Reports every request to `telemetry` as a dependency.
    pub fn with_telemetry(self, telemetry: std::sync::Arc<dyn crate::telemetry::Telemetry>) -> TableService {
        TableService {
            sender: self.sender.with_telemetry(telemetry),
        }
    }

    /// A client for one table (which need not exist yet).
    pub fn table(&self, name: &str) -> Result<TableClient, TableError> {
        let valid = (3..=63).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(TableError::InvalidTableName(name.to_string()));
        }
        Ok(TableClient {
            sender: self.sender.clone(),
            name: name.to_string(),
        })
    }
}

/// A handle on one table. Cheap to clone; holds no lock and no connection of its own.
#[derive(Clone, Debug)]
pub struct TableClient {
    sender: Sender,
    name: String,
}

/// One page of query results and where the next page starts.
#[derive(Debug)]
pub struct Page {
    pub entities: Vec<Entity>,
    pub continuation: Option<Continuation>,
}

/// The service's opaque "next page" position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    next_partition_key: String,
    next_row_key: Option<String>,
}

impl TableClient {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table; an existing table is success (so every start-up can call it).
    pub async fn create_if_missing(&self) -> Result<(), TableError> {
        let body = serde_json::json!({ "TableName": self.name });
        let resp = self
            .sender
            .send("create table", &self.name, Method::POST, "Tables", Some(body), None)
            .await?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::CONFLICT => Ok(()),
            _ => Err(self.sender.service_error("create table", &self.name, resp).await),
        }
    }

    /// Inserts a new row; [`TableError::AlreadyExists`] if the keys are taken. Returns the new ETag.
    pub async fn insert(&self, entity: &Entity) -> Result<ETag, TableError> {
        let resp = self
            .sender
            .send(
                "insert",
                &self.name,
                Method::POST,
                &self.name,
                Some(entity.to_body()),
                None,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT => self.sender.etag_of("insert", &resp),
            StatusCode::CONFLICT => Err(TableError::AlreadyExists {
                table: self.name.clone(),
                partition_key: entity.partition_key().to_string(),
                row_key: entity.row_key().to_string(),
            }),
            _ => Err(self.sender.service_error("insert", &self.name, resp).await),
        }
    }

    /// Reads one row with its ETag; `None` if it does not exist.
    pub async fn get(&self, partition_key: &str, row_key: &str) -> Result<Option<Entity>, TableError> {
        Entity::new(partition_key, row_key)?; // validates the keys
        let path = self.entity_path(partition_key, row_key);
        let resp = self
            .sender
            .send("get", &self.name, Method::GET, &path, None, None)
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let etag = self.sender.etag_of("get", &resp)?;
                let row = self.sender.json_object("get", resp).await?;
                Entity::from_wire(row, Some(etag))
                    .map(Some)
                    .map_err(|detail| TableError::InvalidResponse {
                        operation: "get",
                        detail,
                    })
            }
            StatusCode::NOT_FOUND => {
                let err = self.sender.service_error("get", &self.name, resp).await;
                if err.is_table_missing() { Err(err) } else { Ok(None) }
            }
            _ => Err(self.sender.service_error("get", &self.name, resp).await),
        }
    }

    /// Replaces the whole row if `if_match` holds; returns the new ETag.
    pub async fn replace(&self, entity: &Entity, if_match: &IfMatch) -> Result<ETag, TableError> {
        self.update("replace", Method::PUT, entity, Some(if_match)).await
    }

    /// Merges the given columns into the row if `if_match` holds; other columns are kept.
    pub async fn merge(&self, entity: &Entity, if_match: &IfMatch) -> Result<ETag, TableError> {
        let merge = Method::from_bytes(b"MERGE").expect("MERGE is a valid method token");
        self.update("merge", merge, entity, Some(if_match)).await
    }

    /// Inserts or replaces the row whatever its state. Only for rows no other writer races on.
    pub async fn upsert(&self, entity: &Entity) -> Result<ETag, TableError> {
        self.update("upsert", Method::PUT, entity, None).await
    }

    async fn update(
        &self,
        operation: &'static str,
        method: Method,
        entity: &Entity,
        if_match: Option<&IfMatch>,
    ) -> Result<ETag, TableError> {
        let path = self.entity_path(entity.partition_key(), entity.row_key());
        let resp = self
            .sender
            .send(operation, &self.name, method, &path, Some(entity.to_body()), if_match)
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => self.sender.etag_of(operation, &resp),
            status => Err(self
                .keyed_error(operation, status, entity.partition_key(), entity.row_key(), resp)
                .await),
        }
    }

    /// Deletes the row if `if_match` holds.
    pub async fn delete(&self, partition_key: &str, row_key: &str, if_match: &IfMatch) -> Result<(), TableError> {
        Entity::new(partition_key, row_key)?;
        let path = self.entity_path(partition_key, row_key);
        let resp = self
            .sender
            .send("delete", &self.name, Method::DELETE, &path, None, Some(if_match))
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(()),
            status => Err(self.keyed_error("delete", status, partition_key, row_key, resp).await),
        }
    }

    /// One page of rows matching an OData `filter` (see [`filter`] for building one safely); `top` caps the page.
    pub async fn query_page(
        &self,
        filter: Option<&str>,
        top: Option<u32>,
        from: Option<&Continuation>,
    ) -> Result<Page, TableError> {
        let mut query = Vec::new();
        if let Some(f) = filter {
            query.push(format!("$filter={}", encode_component(f)));
        }
        if let Some(top) = top {
            query.push(format!("$top={top}"));
        }
        if let Some(c) = from {
            query.push(format!("NextPartitionKey={}", encode_component(&c.next_partition_key)));
            if let Some(rk) = &c.next_row_key {
                query.push(format!("NextRowKey={}", encode_component(rk)));
            }
        }
        let path = format!("{}()?{}", self.name, query.join("&"));
        let resp = self
            .sender
            .send("query", &self.name, Method::GET, &path, None, None)
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(self.sender.service_error("query", &self.name, resp).await);
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let continuation = header("x-ms-continuation-NextPartitionKey").map(|pk| Continuation {
            next_partition_key: pk,
            next_row_key: header("x-ms-continuation-NextRowKey"),
        });
        let mut body = self.sender.json_object("query", resp).await?;
        let rows = match body.remove("value") {
            Some(Value::Array(rows)) => rows,
            _ => {
                return Err(TableError::InvalidResponse {
                    operation: "query",
                    detail: "no `value` array in the query response".into(),
                });
            }
        };
        let entities = rows
            .into_iter()
            .map(|row| match row {
                Value::Object(map) => Entity::from_wire(map, None),
                _ => Err("a query row that is not a JSON object".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|detail| TableError::InvalidResponse {
                operation: "query",
                detail,
            })?;
        Ok(Page { entities, continuation })
    }

    /// Every row matching `filter`, following continuations. For bounded result sets (job rows of one
    /// migration); stream with [`TableClient::query_page`] where the count is unbounded.
    pub async fn query_all(&self, filter: Option<&str>) -> Result<Vec<Entity>, TableError> {
        let mut all = Vec::new();
        let mut next = None;
        loop {
            let page = self.query_page(filter, None, next.as_ref()).await?;
            all.extend(page.entities);
            match page.continuation {
                Some(c) => next = Some(c),
                None => return Ok(all),
            }
        }
    }

    fn entity_path(&self, partition_key: &str, row_key: &str) -> String {
        // Inside the key literal a quote is doubled; the whole literal is then percent-encoded.
        let lit = |k: &str| encode_component(&k.replace('\'', "''"));
        format!(
            "{}(PartitionKey='{}',RowKey='{}')",
            self.name,
            lit(partition_key),
            lit(row_key)
        )
    }

    async fn keyed_error(
        &self,
        operation: &'static str,
        status: StatusCode,
        partition_key: &str,
        row_key: &str,
        resp: reqwest::Response,
    ) -> TableError {
        let (table, partition_key, row_key) = (self.name.clone(), partition_key.to_string(), row_key.to_string());
        match status {
            StatusCode::PRECONDITION_FAILED => TableError::Conflict {
                table,
                partition_key,
                row_key,
            },
            StatusCode::NOT_FOUND => {
                let err = self.sender.service_error(operation, &self.name, resp).await;
                if err.is_table_missing() {
                    err
                } else {
                    TableError::NotFound {
                        table,
                        partition_key,
                        row_key,
                    }
                }
            }
            _ => self.sender.service_error(operation, &self.name, resp).await,
        }
    }
}

/// Helpers for OData filters. Values are always quoted here, never spliced in by hand.
pub mod filter {
    /// A string literal: `'it''s'`.
    pub fn literal(value: &str) -> String {
        format!("'{}'", value.replace('\'', "''"))
    }

    /// `column eq 'value'`.
    pub fn eq(column: &str, value: &str) -> String {
        format!("{column} eq {}", literal(value))
    }

    /// Row keys starting with `prefix` (a range on the key, which the service answers from its index).
    pub fn row_key_prefix(prefix: &str) -> String {
        // The smallest string greater than every string that starts with `prefix`.
        let upper = format!("{prefix}\u{10FFFF}");
        format!("RowKey ge {} and RowKey lt {}", literal(prefix), literal(&upper))
    }
}
