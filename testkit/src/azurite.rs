use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{HarnessError, free_ports, poll_until, workspace_root};

/// Azurite's well-known development account (public, documented by Microsoft; not a secret).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented by Microsoft; not a secret).
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How long Azurite gets to answer after it starts; it needs about 1 s on an idle machine and more under a
/// parallel `cargo build`, so the deadline is generous and the poll returns as soon as it is up.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How many times to retry with fresh ports when another process took a port between choosing and binding.
const START_ATTEMPTS: u32 = 3;
/// How long a stopping Azurite gets to save its stores and exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A running Azurite with in-memory persistence on loopback ports chosen at start. Dropping it kills the
/// process; isolate tests by giving each its own table and container names (or its own `Azurite`).
pub struct Azurite {
    child: Child,
    blob_port: u16,
    queue_port: u16,
    table_port: u16,
    log: PathBuf,
    /// `Some(dir)`: data is kept on disk there, so the process can be stopped and started again.
    location: Option<PathBuf>,
    workdir: PathBuf,
    /// Set when a start failed: its error names the log, which must outlive the process.
    keep_workdir: bool,
}

impl Azurite {
    /// Starts Azurite and returns once both the Blob and the Table endpoints answer HTTP.
    pub async fn start() -> Result<Azurite, HarnessError> {
        Self::start_with(false).await
    }

    /// Starts Azurite keeping its data on disk, so [`Azurite::stop`] and [`Azurite::restart`] model a storage
    /// outage that loses nothing.
    pub async fn start_persistent() -> Result<Azurite, HarnessError> {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Result<Azurite, HarnessError> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let outcome = Self::start_once(persistent).await;
            // Only the last attempt's log is named in an error: an earlier one's directory goes.
            if let Some(HarnessError::AzuriteExited { log, .. }) = last_error.take()
                && let Some(dir) = log.parent()
            {
                let _ = std::fs::remove_dir_all(dir);
            }
            match outcome {
                Ok(azurite) => return Ok(azurite),
                // A port race makes Azurite exit early; choose new ports and try again.
                Err(err @ HarnessError::AzuriteExited { .. }) => last_error = Some(err),
                Err(other) => return Err(other),
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }

    async fn start_once(persistent: bool) -> Result<Azurite, HarnessError> {
        let [blob_port, queue_port, table_port] = free_ports()?;
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let workdir = std::env::temp_dir().join(format!("fhir-testkit-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&workdir)?;
        let location = persistent.then(|| workdir.join("data"));
        let log = workdir.join("azurite.log");
        let child = Self::spawn(&workdir, &log, location.as_deref(), (blob_port, queue_port, table_port))?;
        let mut azurite = Azurite {
            child,
            blob_port,
            queue_port,
            table_port,
            log,
            location,
            workdir,
            keep_workdir: false,
        };
        if let Err(err) = azurite.wait_ready().await {
            azurite.keep_workdir = true;
            return Err(err);
        }
        Ok(azurite)
    }

    fn spawn(
        workdir: &std::path::Path,
        log: &std::path::Path,
        location: Option<&std::path::Path>,
        (blob_port, queue_port, table_port): (u16, u16, u16),
    ) -> Result<Child, HarnessError> {
        let root = workspace_root();
        let entry = root.join("node_modules/azurite/dist/src/azurite.js");
        if !entry.exists() {
            return Err(HarnessError::AzuriteMissing(entry));
        }
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut command = Command::new("node");
        command.arg(root.join("scripts/azurite-supervised.cjs")).args([
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ]);
        // The extent memory limit applies to in-memory persistence only (Azurite refuses it otherwise).
        match location {
            Some(dir) => command.arg("--location").arg(dir),
            None => command.args(["--inMemoryPersistence", "--extentMemoryLimit", "256"]),
        };
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &blob_port.to_string()])
            .args(["--queueHost", "127.0.0.1", "--queuePort", &queue_port.to_string()])
            .args(["--tableHost", "127.0.0.1", "--tablePort", &table_port.to_string()])
            .env("AZURITE_PARENT_PID", std::process::id().to_string())
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        command.spawn().map_err(HarnessError::NodeMissing)
    }

    /// Stops the process the way a service stops, keeping every write it acknowledged (with
    /// [`Azurite::start_persistent`] its data stays on disk). A SIGKILL would not: Azurite keeps its tables and
    /// blob metadata in LokiJS stores that save to disk every 5 s (`autosaveInterval: 5000` in
    /// `LokiTableMetadataStore.js` and `LokiBlobMetadataStore.js`) and on close, so a kill rolls storage back by
    /// up to 5 s, which Azure Storage never does to an acknowledged write. On SIGTERM Azurite closes its servers
    /// and stores (`shutdown` in `azurite.js`); a process still running after the grace period is killed.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = std::time::Instant::now() + STOP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again on the same ports and data, and waits until it answers. While it was down
    /// another process may have been given one of its ports (a test's outgoing connection takes its local port
    /// from the same range); the start is tried again until the port is free or the deadline passes.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        let deadline = std::time::Instant::now() + READY_DEADLINE;
        loop {
            self.child = Self::spawn(
                &self.workdir,
                &self.log,
                self.location.as_deref(),
                (self.blob_port, self.queue_port, self.table_port),
            )?;
            match self.wait_ready().await {
                Err(HarnessError::AzuriteExited { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => {
                    self.keep_workdir |= other.is_err();
                    return other;
                }
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let http = reqwest::Client::new();
        for (what, url) in [
            ("blob", format!("http://127.0.0.1:{}/", self.blob_port)),
            ("table", format!("http://127.0.0.1:{}/", self.table_port)),
        ] {
            let child = &mut self.child;
            let log = self.log.clone();
            let ready = poll_until(what, READY_DEADLINE, Duration::from_millis(50), || {
                let exited = child.try_wait().ok().flatten();
                let request = http.get(&url).send();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status.to_string()));
                    }
                    // Any HTTP answer (even 400) means the listener is up.
                    request.await.ok().map(|_| Ok(()))
                }
            })
            .await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(status)) => return Err(HarnessError::AzuriteExited { status, log }),
                Err(_) => {
                    return Err(HarnessError::AzuriteNotReady {
                        what: what.to_string(),
                        log,
                    });
                }
            }
        }
        Ok(())
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1` (path-style, no trailing slash: Azurite rejects `//`).
    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{DEV_ACCOUNT}", self.blob_port)
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub fn table_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{DEV_ACCOUNT}", self.table_port)
    }

    /// A storage connection string for this instance, in the form Azure portals hand out.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint={};TableEndpoint={};",
            self.blob_endpoint(),
            self.table_endpoint()
        )
    }

    /// The blob service's loopback port (for a [`crate::Gate`] in front of it).
    pub fn blob_port(&self) -> u16 {
        self.blob_port
    }

    /// The table service's loopback port (for a [`crate::Gate`] in front of it).
    pub fn table_port(&self) -> u16 {
        self.table_port
    }

    /// A connection string like [`Azurite::connection_string`] whose endpoints are other loopback ports: a
    /// [`crate::Gate`] in front of one of this Azurite's services, so it can fail while the other answers.
    pub fn connection_string_via(&self, blob_port: u16, table_port: u16) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:{blob_port}/{DEV_ACCOUNT};TableEndpoint=http://127.0.0.1:{table_port}/{DEV_ACCOUNT};"
        )
    }

    /// Where Azurite's stdout and stderr go, for diagnosing a failed test.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The process id, so a test can prove the process is gone after drop.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The working directory (log, on-disk data) is kept only when a test fails, for diagnosis.
        if !self.keep_workdir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}
