//! Which Functions invocation a telemetry item belongs to.
//!
//! The host sends each invocation a W3C `traceparent` header and records the invocation itself as a request in
//! App Insights under that trace id. Items we send with the same `operation_Id` (the trace id) and the host's span
//! as `operation_ParentId` appear under that request in the portal's transaction view. The operation travels with
//! the invocation's task ([`scope`]); the engine never spawns, so everything it reports is inside the scope.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};

/// The invocation an item belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// 32 lower-case hex digits: the trace id, App Insights' `operation_Id`.
    pub id: String,
    /// 16 hex digits: the host's span for this invocation, App Insights' `operation_ParentId`.
    pub parent_id: Option<String>,
    /// The function name, App Insights' `operation_Name`.
    pub name: String,
}

impl Operation {
    /// The operation for an invocation: the host's trace when its `traceparent` is valid, else a new trace (a
    /// malformed header from outside must not break the invocation, and must not be echoed either).
    pub fn for_invocation(traceparent: Option<&str>, name: &str) -> Operation {
        match traceparent.and_then(parse_traceparent) {
            Some((trace, span)) => Operation {
                id: trace,
                parent_id: Some(span),
                name: name.to_string(),
            },
            None => Operation {
                id: random_hex(32),
                parent_id: None,
                name: name.to_string(),
            },
        }
    }
}

/// `version-traceid-spanid-flags`, all lower-case hex, ids not all zero (W3C Trace Context §3.2).
pub fn parse_traceparent(header: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let [version, trace, span, flags, ..] = parts.as_slice() else {
        return None;
    };
    let valid = hex(version, 2)
        && *version != "ff"
        && (parts.len() == 4 || *version != "00")
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    valid.then(|| (trace.to_string(), span.to_string()))
}

tokio::task_local! {
    static CURRENT: Operation;
}

/// Runs `f` with `operation` as the current operation.
pub async fn scope<F: Future>(operation: Operation, f: F) -> F::Output {
    CURRENT.scope(operation, f).await
}

/// Spawns `f` on the runtime inside the current operation, so what it reports still joins the invocation
/// (task-locals do not cross `tokio::spawn` by themselves).
pub fn spawn_in_current<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(operation) => tokio::spawn(CURRENT.scope(operation, f)),
        None => tokio::spawn(f),
    }
}

/// The current operation, if the caller runs inside [`scope`].
pub fn current() -> Option<Operation> {
    CURRENT.try_with(Operation::clone).ok()
}

/// `len` random lower-case hex digits, from the standard library's randomly keyed hasher (each `RandomState` gets
/// fresh keys), mixed with the time and process id. For ids that must not collide, not for secrets.
pub fn random_hex(len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_traceparent_becomes_the_operation() {
        let op = Operation::for_invocation(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            "ExportStatus",
        );
        assert_eq!(op.id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(op.parent_id.as_deref(), Some("b7ad6b7169203331"));
        assert_eq!(op.name, "ExportStatus");
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-\u{e9}af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        ] {
            let op = Operation::for_invocation(Some(bad), "f");
            assert_eq!(op.parent_id, None, "{bad:?}");
            assert_eq!(op.id.len(), 32);
            assert!(op.id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        // A later version may append fields.
        assert!(parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x").is_some());
    }

    #[tokio::test]
    async fn the_operation_is_current_only_inside_its_scope() {
        assert_eq!(current(), None);
        let op = Operation::for_invocation(None, "f");
        let inside = scope(op.clone(), async { current() }).await;
        assert_eq!(inside, Some(op));
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn spawned_work_stays_in_its_operation() {
        let op = Operation::for_invocation(None, "f");
        let seen = scope(op.clone(), async {
            spawn_in_current(async { current() }).await.unwrap()
        })
        .await;
        assert_eq!(seen, Some(op));
        assert_eq!(spawn_in_current(async { current() }).await.unwrap(), None);
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_hex(32), random_hex(32));
        assert_eq!(random_hex(16).len(), 16);
    }
}
