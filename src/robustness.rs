//! Untrusted input never panics: every parser of what servers, the Functions host and operators hand the tool is
//! fed thousands of mutations of valid samples (truncations, byte flips, spliced JSON fragments, wrong types).
//! A parser may refuse a mutant, and most do; it may not panic. The generator is seeded and the seed is printed,
//! so `FUZZ_SEED=<n> cargo test --lib robustness` replays a failure.

use serde_json::Value;

use crate::config::{Settings, SettingsSource};
use crate::fhir::FhirClient;
use crate::fhir::auth::TokenSource;
use crate::fhir::client::diagnostics_of;
use crate::fhir::wire::{ExportManifest, ImportResult};
use crate::functions::payload::InvocationRequest;
use crate::ledger::locate::{error_line, identity, input_line};
use crate::telemetry::appinsights::ConnectionString;
use crate::telemetry::context::parse_traceparent;

const MUTANTS: usize = 3000;

struct Rng(u64);

impl Rng {
    fn seeded(what: &str) -> Rng {
        let seed = std::env::var("FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(7, |d| d.as_nanos() as u64)
                    | 1
            });
        println!("{what}: FUZZ_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

const FRAGMENTS: &[&str] = &[
    "null",
    "[]",
    "{}",
    "\"\"",
    "\"x\"",
    "0",
    "-1",
    "1e999",
    "18446744073709551616",
    "true",
    "\"\\u0000\"",
    "\"\u{1F600}\"",
    "[[[[[[[[[[]]]]]]]]]]",
    "\"%00%2e%2e/\"",
    ",",
    ":",
    "\"",
    "{\"a\":",
    "\\",
    "\u{0}",
];

/// One mutation of `sample`: truncate, flip a byte, splice a fragment in, or repeat a slice.
fn mutate(sample: &str, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = sample.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        if bytes.is_empty() {
            bytes.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes());
            continue;
        }
        let at = rng.below(bytes.len());
        match rng.below(4) {
            0 => bytes.truncate(at),
            1 => bytes[at] = rng.below(256) as u8,
            2 => {
                let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                bytes.splice(at..at, fragment.iter().copied());
            }
            _ => {
                let end = (at + rng.below(40)).min(bytes.len());
                let slice = bytes[at..end].to_vec();
                bytes.splice(at..at, slice);
            }
        }
    }
    bytes
}

/// Feeds `check` every mutant of every sample, the samples themselves first.
fn fuzz(what: &str, samples: &[&str], mut check: impl FnMut(&[u8])) {
    let mut rng = Rng::seeded(what);
    for s in samples {
        check(s.as_bytes());
    }
    for _ in 0..MUTANTS {
        let s = samples[rng.below(samples.len())];
        check(&mutate(s, &mut rng));
    }
}

const TIMER: &str = r#"{"Data":{"myTimer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{"sys":{"MethodName":"ExportStatus","UtcNow":"2026-11-26T07:40:45.004275Z","RandGuid":"0f8fad5b-d9cb-469f-a165-70867728950e"}}}"#;
const HTTP: &str = r#"{"Data":{"req":{"Url":"https://f.example/api/E2ETest_Http?mode=all","Method":"POST","Query":{"mode":"all","count":"5"},"Headers":{"Content-Type":["application/json"]},"Params":{"id":"abc"},"Identities":[],"Body":"{\"types\":\"Patient\"}"}},"Metadata":{"Query":"{\"mode\":\"all\"}","Headers":{}}}"#;

#[test]
fn custom_handler_payloads() {
    fuzz("payloads", &[TIMER, HTTP], |b| {
        if let Ok(request) = serde_json::from_slice::<InvocationRequest>(b) {
            let _ = request.timer("myTimer");
            let _ = request.utc_now();
            if let Ok(http) = request.http("req") {
                let _ = format!("{http:?}");
            }
        }
    });
}

const MANIFEST: &str = r#"{"transactionTime":"2026-01-01T00:00:00.000+00:00","request":"https://src/$export?_since=2026-01-01T00:00:00.000Z","requiresAccessToken":false,"output":[{"type":"Patient","url":"https://acct.blob.core.windows.net/c/Patient-1.ndjson","count":100,"sequence":0},{"type":"SearchParameter","url":"https://acct.blob.core.windows.net/c/SearchParameter-1.ndjson","count":3}],"error":[],"extension":{"x":1}}"#;
const IMPORT: &str = r#"{"transactionTime":"2026-01-01T00:00:00+00:00","request":"https://dst/$import","output":[{"type":"Patient","count":99,"inputUrl":"https://acct.blob.core.windows.net/c/Patient-1.ndjson"}],"error":[{"type":"Patient","count":1,"inputUrl":"https://acct.blob.core.windows.net/c/Patient-1.ndjson","url":"https://acct.blob.core.windows.net/fhirlogs/Patient.ndjson"}]}"#;
const OUTCOME: &str = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"export operation failed for reason: Unknown Error."}]}"#;

#[test]
fn manifests_import_results_and_outcomes() {
    fuzz("wire", &[MANIFEST, IMPORT, OUTCOME], |b| {
        if let Ok(m) = serde_json::from_slice::<ExportManifest>(b) {
            let _ = m.output.iter().map(|f| f.count).fold(0u64, u64::saturating_add);
        }
        if let Ok(r) = serde_json::from_slice::<ImportResult>(b) {
            let _ = (r.imported(), r.failed());
        }
        let _ = diagnostics_of(&String::from_utf8_lossy(b));
    });
}

#[test]
fn bundles_and_their_next_links() {
    let client = FhirClient::new(
        url::Url::parse("https://fhir.example/base").unwrap(),
        TokenSource::None,
        "t",
        reqwest::Client::new(),
    );
    let bundle = r#"{"resourceType":"Bundle","type":"history","link":[{"relation":"self","url":"https://fhir.example/base/_history"},{"relation":"next","url":"https://fhir.example/base/_history?ct=abc"}],"entry":[{"resource":{"resourceType":"Patient","id":"p","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00Z"}},"request":{"method":"PUT","url":"Patient/p"}}]}"#;
    fuzz("bundles", &[bundle], |b| {
        if let Ok(v) = serde_json::from_slice::<Value>(b)
            && let Ok(Some(next)) = client.next_page(&v)
        {
            // A next link is only ever followed on the server it came from.
            assert_eq!(next.host_str(), Some("fhir.example"));
        }
    });
}

#[test]
fn import_error_lines() {
    let line = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","details":{"text":"Failed to import resource with version conflict, resource id: p1, line: 3"},"diagnostics":"Failed to process resource at line: 3 with stream start offset: 0"}]}"#;
    let input = "{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n\n{\"a\":1}\n";
    fuzz("error lines", &[line, "not json at all", ""], |b| {
        let said = error_line(&String::from_utf8_lossy(b));
        if let Some((offset, n)) = said.position {
            let _ = input_line(input.as_bytes(), offset, n).map(identity);
        }
    });
    // Positions from a hostile error file never read outside the input.
    fuzz("input positions", &[input], |b| {
        for (offset, n) in [(0, 1), (3, 1), (u64::MAX, 1), (0, u64::MAX), (b.len() as u64, 1)] {
            let _ = input_line(b, offset, n).map(identity);
        }
    });
}

#[test]
fn connection_strings_and_traceparents() {
    let cs = "InstrumentationKey=00000000-1111-2222-3333-444444444444;IngestionEndpoint=https://x.in.applicationinsights.azure.com/;LiveEndpoint=https://x.livediagnostics.monitor.azure.com/";
    fuzz("connection strings", &[cs], |b| {
        let _ = ConnectionString::parse(&String::from_utf8_lossy(b));
    });
    fuzz(
        "traceparents",
        &["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
        |b| {
            if let Some((trace, span)) = parse_traceparent(&String::from_utf8_lossy(b)) {
                assert_eq!((trace.len(), span.len()), (32, 16));
            }
        },
    );
}

#[test]
fn settings_values() {
    let names = [
        "AZURE_SourceUri",
        "AZURE_DestinationUri",
        "AZURE_StartDate",
        "AZURE_EndDate",
        "AZURE_ExportChunkTime",
        "AZURE_ExportChunkDuration",
        "AZURE_StartTime",
        "AZURE_EndTime",
        "AZURE_MaxExportRetries",
        "AZURE_PayloadCount",
        "AZURE_ResourceTypes",
        "AZURE_PartitionKey",
        "AZURE_ChunkTableName",
        "AZURE_MaxWindowsInFlight",
        "AZURE_LeaseSeconds",
        "AZURE_IsParallel",
        "AZURE_StorageConnectionString",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
    ];
    let mut rng = Rng::seeded("settings");
    let valid = [
        "https://src.example",
        "https://dst.example",
        "2024-01-01T00:00:00Z",
        "2024-06-01T00:00:00Z",
        "30",
        "Days",
        "8",
        "17",
        "3",
        "5",
        "Patient,Observation",
        "pk",
        "chunk",
        "3",
        "660",
        "true",
        "UseDevelopmentStorage=true",
        "InstrumentationKey=00000000-1111-2222-3333-444444444444",
    ];
    for _ in 0..MUTANTS {
        let mut source = SettingsSource::default();
        source.extend([("AzureWebJobsStorage", "UseDevelopmentStorage=true")]);
        for (name, value) in names.iter().zip(valid) {
            if rng.below(3) == 0 {
                let mutant = String::from_utf8_lossy(&mutate(value, &mut rng)).into_owned();
                source.extend([(*name, mutant)]);
            } else {
                source.extend([(*name, value)]);
            }
        }
        // Either settings or a list of problems, each naming its setting.
        if let Err(e) = Settings::from_source(&source) {
            assert!(!e.0.is_empty());
        }
    }
}
