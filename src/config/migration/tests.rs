use super::*;

fn parse(pairs: &[(&str, &str)]) -> Result<MigrationSettings, Vec<String>> {
    let mut source = SettingsSource::default();
    source.extend([
        ("AZURE_SourceUri", "https://src.azurehealthcareapis.com"),
        ("AZURE_DestinationUri", "https://ws-fhir.fhir.azurehealthcareapis.com"),
    ]);
    source.extend(pairs.iter().copied());
    let mut problems = Vec::new();
    let settings = MigrationSettings::from_source(&source, &mut problems);
    if problems.is_empty() {
        Ok(settings.expect("settings when no problems"))
    } else {
        Err(problems)
    }
}

#[test]
fn defaults_match_the_original_tool() {
    let s = parse(&[]).unwrap();
    assert_eq!(s.import_mode, "IncrementalLoad");
    assert_eq!(
        (s.partition_key.as_str(), s.row_key.as_str()),
        ("mypartitionkey", "myrowkey")
    );
    assert!(s.is_parallel);
    assert_eq!((s.export_chunk_time, s.chunk_unit), (30, ChunkUnit::Days));
    assert_eq!(s.chunk_limit, 100_000_000);
    assert_eq!((s.payload_count, s.file_count), (5, 10_000));
    assert_eq!(s.max_count, None);
    assert_eq!(s.max_export_retries, None);
    assert_eq!(s.pause, None);
    assert_eq!(s.resource_types.len(), 145, "every R4 type but SearchParameter");
    assert!(s.resource_types.iter().any(|t| t == "SubstanceNucleicAcid"));
    assert_eq!(s.query_surface, ["?_summary=Count"]);
    assert_eq!(s.safety_lag, TimeDelta::seconds(300));
    assert!(s.overlap_exports);
    assert_eq!(s.chunk_span(), TimeDelta::days(30));
}

#[test]
fn booleans_are_case_insensitive_and_both_template_spellings_work() {
    let s = parse(&[
        ("AZURE_ExportWithHistory", "True"),
        ("AZURE_ExportWithDelete", "TRUE"),
        ("AZURE_ExportDeidentified", "true"),
        ("AZURE_ConfigFile", "configs/DemoTruncate.json"),
        ("AZURE_StopDm", "true"),
        ("AZURE_StartTime", "22"),
        ("AZURE_EndTime", "6"),
    ])
    .unwrap();
    assert_eq!(s.associated_data(), Some("_history,_deleted"));
    assert_eq!(s.deidentify_config.as_deref(), Some("DemoTruncate.json"));
    assert_eq!(
        s.pause,
        Some(PauseWindow {
            start_hour: 22,
            end_hour: 6
        })
    );
}

#[test]
fn chunk_limit_max_count_and_retries_are_honoured() {
    let s = parse(&[
        ("AZURE_ChunkLimit", "5000"),
        ("AZURE_MaxCount", "true"),
        ("AZURE_MaxExportRetriesEnabled", "true"),
        ("AZURE_MaxExportRetries", "3"),
        ("AZURE_ExportChunkDuration", "hours"),
        ("AZURE_ExportChunkTime", "6"),
    ])
    .unwrap();
    assert_eq!(s.chunk_limit, 5000);
    assert_eq!(s.max_count, Some(10_000), "0 means 10,000 when MaxCount is on");
    assert_eq!(s.max_export_retries, Some(3));
    assert_eq!(s.chunk_span(), TimeDelta::hours(6));
}

#[test]
fn lists_replace_the_defaults_in_both_forms() {
    let s = parse(&[("AZURE_ResourceTypes", "Patient, Observation")]).unwrap();
    assert_eq!(s.resource_types, ["Patient", "Observation"]);
    let s = parse(&[
        ("AZURE_ResourceTypes__0", "Encounter"),
        ("AZURE_ResourceTypes__1", "Claim"),
    ])
    .unwrap();
    assert_eq!(s.resource_types, ["Encounter", "Claim"]);
}

#[test]
fn every_problem_is_reported_in_one_pass() {
    let problems = parse(&[
        ("AZURE_SourceUri", "not a url"),
        ("AZURE_ExportChunkDuration", "Weeks"),
        ("AZURE_PauseDm", "true"),
        ("AZURE_StartTime", "24"),
        ("AZURE_StartDate", "2024-02-01"),
        ("AZURE_EndDate", "2024-01-01"),
        ("AZURE_IsExportDeidentified", "true"),
        ("AZURE_IsParallel", "false"),
        ("AZURE_ClientCredential", "true"),
        ("AZURE_ExportWithHistory", "yes"),
        ("AZURE_ImportMode", "IncrementalImport"),
    ])
    .unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "AZURE_SourceUri 'not a url'",
        "AZURE_ExportChunkDuration 'Weeks'",
        "AZURE_StartTime 24",
        "AZURE_EndDate",
        "needs AZURE_ConfigFile",
        "needs AZURE_IsParallel=true",
        "AZURE_TenantId, AZURE_ClientId and AZURE_ClientSecret",
        "AZURE_ExportWithHistory 'yes'",
        "AZURE_ImportMode 'IncrementalImport'",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn dates_accept_iso_forms_and_secrets_stay_redacted() {
    let s = parse(&[
        ("AZURE_StartDate", "2023-01-31"),
        ("AZURE_EndDate", "2023-03-01T12:00:00Z"),
        ("AZURE_SpecificRun", "true"),
        ("AZURE_ClientCredential", "true"),
        ("AZURE_TenantId", "t"),
        ("AZURE_ClientId", "c"),
        ("AZURE_ClientSecret", "s3cr3t-value"),
    ])
    .unwrap();
    assert_eq!(s.start_date.unwrap().to_rfc3339(), "2023-01-31T00:00:00+00:00");
    assert_eq!(s.end_date.unwrap().to_rfc3339(), "2023-03-01T12:00:00+00:00");
    assert!(!format!("{s:?}").contains("s3cr3t-value"));
}

#[test]
fn history_without_deletes_is_warned_about() {
    let s = parse(&[("AZURE_ExportWithHistory", "true")]).unwrap();
    assert!(s.warnings().iter().any(|w| w.contains("come back to life")));
    let s = parse(&[("AZURE_ExportWithHistory", "true"), ("AZURE_ExportWithDelete", "true")]).unwrap();
    assert!(s.warnings().is_empty());
}

#[test]
fn credential_type_picks_the_developer_login_or_is_refused() {
    assert!(!parse(&[]).unwrap().developer_credential);
    assert!(
        parse(&[("AZURE_CredentialType", "developertools")])
            .unwrap()
            .developer_credential
    );
    let problems = parse(&[("AZURE_CredentialType", "Password")]).unwrap_err();
    assert!(problems[0].contains("AZURE_CredentialType 'Password'"));
}

#[test]
fn windows_in_flight_is_bounded_and_one_without_overlap() {
    assert_eq!(parse(&[]).unwrap().windows_in_flight, 3);
    assert_eq!(
        parse(&[("AZURE_MaxWindowsInFlight", "5")]).unwrap().windows_in_flight,
        5
    );
    let off = parse(&[("AZURE_OverlapExports", "false"), ("AZURE_MaxWindowsInFlight", "5")]).unwrap();
    assert_eq!(
        off.windows_in_flight, 1,
        "without overlap one window at a time, whatever the setting"
    );
    for bad in ["0", "11", "many"] {
        let err = parse(&[("AZURE_MaxWindowsInFlight", bad)]).unwrap_err();
        assert!(
            err.iter().any(|p| p.contains("AZURE_MaxWindowsInFlight")),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn an_inclusive_till_is_detected_from_the_source_host_or_set() {
    assert!(
        parse(&[]).unwrap().export_till_inclusive,
        "Azure API for FHIR searches with le<till>"
    );
    let ahds = [("AZURE_SourceUri", "https://ws-src.fhir.azurehealthcareapis.com")];
    assert!(
        !parse(&ahds).unwrap().export_till_inclusive,
        "AHDS's parallel export takes [since, till)"
    );
    let forced = [
        ("AZURE_SourceUri", "https://ws-src.fhir.azurehealthcareapis.com"),
        ("AZURE_ExportTillInclusive", "TRUE"),
    ];
    assert!(parse(&forced).unwrap().export_till_inclusive);
    assert!(
        parse(&forced).unwrap().export_till_fixed,
        "an explicit value is never corrected"
    );
    assert!(!parse(&ahds).unwrap().export_till_fixed, "auto is only a first guess");
    assert!(
        !parse(&[("AZURE_ExportTillInclusive", "false")])
            .unwrap()
            .export_till_inclusive
    );
    let bad = parse(&[("AZURE_ExportTillInclusive", "sometimes")]).unwrap_err();
    assert!(bad[0].contains("AZURE_ExportTillInclusive"), "{bad:?}");
}

#[test]
fn a_plain_http_server_is_refused_unless_it_is_on_this_machine() {
    let problems = parse(&[("AZURE_SourceUri", "http://fhir.example.org")]).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("AZURE_SourceUri") && p.contains("not https")),
        "{problems:?}"
    );
    assert!(parse(&[("AZURE_DestinationUri", "http://127.0.0.1:8080")]).is_ok());
    assert!(parse(&[("AZURE_DestinationUri", "http://localhost:8080")]).is_ok());
}

#[test]
fn an_out_of_range_value_is_said_not_silently_clamped() {
    let s = parse(&[("AZURE_DeepCheckCount", "5000")]).unwrap();
    assert_eq!(s.deep_check_count, MAX_DEEP_CHECK_COUNT);
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.contains("AZURE_DeepCheckCount 5000") && w.contains("1000 is used")),
        "{:?}",
        s.warnings()
    );
    assert!(parse(&[("AZURE_DeepCheckCount", "50")]).unwrap().adjusted.is_empty());
}
