//! The custom-handler process, driven the way the Azure Functions host drives it: environment in, readiness
//! polled on `GET /`, invocations POSTed to `/<FunctionName>` with the host's headers.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{free_port, poll_until};

/// How long the host waits for a custom handler to answer `GET /` (its InitializationTimeout).
const HOST_INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `serve` process, killed on drop.
pub struct HandlerProcess {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HandlerProcess {
    /// Starts `binary serve` with only `PATH`, the host's variables and `settings` in its environment, and
    /// returns once it answers `GET /`. Its stdout goes to `log` when given (the host captures it likewise).
    pub async fn start(
        binary: &Path,
        settings: &[(&str, String)],
        log: Option<&Path>,
    ) -> std::io::Result<HandlerProcess> {
        let port = free_port()?;
        let stdout = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        };
        let child = Command::new(binary)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("FUNCTIONS_WORKER_RUNTIME", "custom")
            .envs(settings.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()?;
        let handler = HandlerProcess {
            child,
            port,
            http: reqwest::Client::new(),
        };
        let url = handler.url("");
        poll_until(
            "the handler to answer GET /",
            HOST_INIT_TIMEOUT,
            Duration::from_millis(25),
            || {
                let request = handler.http.get(&url).send();
                async move { request.await.ok().filter(|r| r.status().is_success()) }
            },
        )
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::TimedOut, e))?;
        Ok(handler)
    }

    /// Stops the process the way the host recycles a worker (SIGTERM) and waits, up to `within`, for it to exit.
    pub async fn terminate(&mut self, within: Duration) -> std::io::Result<std::process::ExitStatus> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the handler did not exit within {within:?} of SIGTERM"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The process id (benchmarks read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// POSTs an invocation payload with the headers the host sends.
    pub async fn invoke(&self, function: &str, payload: &Value) -> reqwest::Result<reqwest::Response> {
        self.invoker().invoke(function, payload).await
    }

    /// A handle that invokes this process from another task (it outlives nothing: once the process is gone,
    /// its calls fail).
    pub fn invoker(&self) -> Invoker {
        Invoker {
            base: self.url(""),
            http: self.http.clone(),
        }
    }
}

/// Invokes a handler process the way the host does, from any task.
#[derive(Clone, Debug)]
pub struct Invoker {
    base: String,
    http: reqwest::Client,
}

impl Invoker {
    /// POSTs an invocation payload with the headers the host sends.
    pub async fn invoke(&self, function: &str, payload: &Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}{function}", self.base))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Azure-Functions-InvocationId", "4c4f3a5e-0000-4000-8000-000000000001")
            .header("X-Azure-Functions-HostVersion", "4.1037.0")
            .header("User-Agent", "Azure-Functions-Host/4.1037.0")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .json(payload)
            .send()
            .await
    }
}

/// A timer-trigger payload as a real host sends it.
pub fn timer_payload(function: &str, binding: &str, utc_now: &str, past_due: bool) -> Value {
    json!({
        "Data": { binding: { "Schedule": { "AdjustForDST": true }, "ScheduleStatus": null, "IsPastDue": past_due } },
        "Metadata": { "sys": { "MethodName": function, "UtcNow": utc_now, "RandGuid": "0f8fad5b-d9cb-469f-a165-70867728950e" } }
    })
}

/// An HTTP-trigger payload (non-forwarding mode) as a real host sends it.
pub fn http_payload(function: &str, binding: &str, method: &str, query: Value, body: Option<&str>) -> Value {
    let mut req = json!({
        "Url": format!("http://localhost:7071/api/{function}"), "Method": method, "Query": query,
        "Headers": { "Accept": ["application/json"] }, "Params": {}
    });
    if let Some(body) = body {
        req["Body"] = json!(body);
    }
    json!({
        "Data": { binding: req },
        "Metadata": { "sys": { "MethodName": function, "UtcNow": "2026-11-26T07:40:45Z", "RandGuid": "0f8fad5b" } }
    })
}
