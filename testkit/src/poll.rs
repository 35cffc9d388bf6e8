use std::future::Future;
use std::time::{Duration, Instant};

/// A condition was still false when its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct PollTimeout {
    pub what: String,
    pub waited: Duration,
}

/// Calls `check` every `every` until it returns `Some`, or fails once `deadline` has passed.
///
/// Tests use this instead of fixed sleeps: they finish as soon as the condition holds and fail with a message
/// naming what never happened.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, PollTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if started.elapsed() >= deadline {
            return Err(PollTimeout {
                what: what.to_string(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_as_soon_as_the_condition_holds() {
        let calls = AtomicU32::new(0);
        let value = poll_until("third call", Duration::from_secs(5), Duration::from_millis(1), || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { (n == 3).then_some(n) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn fails_with_the_condition_named_after_the_deadline() {
        let err = poll_until::<(), _, _>("never", Duration::from_millis(20), Duration::from_millis(5), || async {
            None
        })
        .await
        .unwrap_err();
        assert_eq!(err.what, "never");
        assert!(err.waited >= Duration::from_millis(20));
    }
}
