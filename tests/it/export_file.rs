//! `audit-service export` and `verify-export`: the log written to a file
//! from the database (NDJSON with what proves it, or CSV), and the NDJSON
//! file checked offline against the service's verifier key, each run as
//! the real binary.

use std::path::{Path, PathBuf};

use audit_service::convert::json_to_struct;
use audit_service::integrity::SigningKey;
use audit_service::proto::integrity_service_client::IntegrityServiceClient;
use audit_service::proto::{
    self, DeleteRequest, EventInput, GetCheckpointRequest, GetRequest, QueryRequest, RequestContext,
};

use crate::on_both_backends;
use crate::page_bytes::{EVENTS, append_large_events};
use crate::support::{Backend, Caller, TestServer, event};

on_both_backends!(
    ndjson_export_with_a_filter_and_an_erased_event_verifies_offline,
    ndjson_lines_are_the_events_as_the_api_returns_them,
    a_changed_byte_in_an_event_line_is_tampering_at_that_line,
    a_byte_that_breaks_an_event_line_is_tampering_at_that_line,
    a_removed_event_line_is_tampering,
    swapped_event_lines_are_tampering,
    an_event_line_that_reads_otherwise_than_it_hashes_is_tampering,
    a_changed_checkpoint_is_tampering_and_another_key_cannot_check,
    an_export_resumed_with_after_seq_holds_the_rest_and_verifies,
    an_interrupted_export_cannot_be_checked_and_says_where_to_resume,
    csv_export_has_the_documented_columns_and_rfc_4180_quoting,
    exports_of_no_events_verify,
    export_refuses_a_bad_filter_and_a_position_beyond_the_log,
    metadata_numbers_export_and_verify_exactly,
    progress_is_drawn_on_a_terminal_only,
    exporting_a_large_log_keeps_memory_flat,
);

/// The CSV columns, in their documented order (docs/export.md).
const CSV_COLUMNS: [&str; 24] = [
    "seq",
    "id",
    "occurred_at",
    "recorded_at",
    "actor_id",
    "actor_type",
    "actor_name",
    "actor_email",
    "action",
    "resource_type",
    "resource_id",
    "resource_name",
    "outcome",
    "request_method",
    "request_path",
    "request_status_code",
    "request_client_ip",
    "request_user_agent",
    "request_id",
    "request_client_identity",
    "source",
    "reasoning",
    "metadata",
    "erased",
];

/// A float that the JSON parser's fast path reads back one bit off.
const AWKWARD_FLOAT: f64 = 0.098_009_800_000_000_01;

/// What a run of the binary printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `audit-service ARGS` on the server's database.
fn run(server: &TestServer, args: &[&str]) -> Run {
    run_on(&server.database_url, args)
}

/// Runs `audit-service verify-export FILE --key KEY`, with no database to
/// reach.
fn verify_export(file: &Path, key: &str) -> Run {
    let file = file.to_str().expect("utf-8 path");
    run_on(
        "postgres://nobody@127.0.0.1:9/none",
        &["verify-export", file, "--key", key],
    )
}

fn run_on(database_url: &str, args: &[&str]) -> Run {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Exports `tenant` with `extra` arguments into `dir/name`, which it returns.
#[track_caller]
fn export_to(server: &TestServer, dir: &Path, name: &str, tenant: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let path_text = path.to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["export", "--tenant", tenant, "--output", &path_text];
    args.extend_from_slice(extra);
    let run = run(server, &args);
    assert_eq!(run.code, 0, "export failed:\n{}", run.output());
    path
}

#[track_caller]
fn assert_intact(run: &Run) {
    assert_eq!(run.code, 0, "verify-export should pass:\n{}", run.output());
    assert!(run.stdout.contains("OK: "), "{}", run.output());
}

#[track_caller]
fn assert_tampered_at(run: &Run, line: usize) {
    assert_eq!(
        run.code,
        2,
        "verify-export should report tampering:\n{}",
        run.output()
    );
    assert!(
        run.stdout.contains(&format!("TAMPERED: line {line}: ")),
        "expected line {line}:\n{}",
        run.output()
    );
}

#[track_caller]
fn assert_cannot_check(run: &Run, says: &str) {
    assert_eq!(
        run.code,
        1,
        "verify-export should not be able to check:\n{}",
        run.output()
    );
    assert!(!run.stdout.contains("TAMPERED"), "{}", run.output());
    assert!(
        run.output().contains(says),
        "expected {says:?}:\n{}",
        run.output()
    );
}

/// The service's verifier key, as GetCheckpoint names it.
async fn service_key(server: &TestServer, caller: &Caller) -> String {
    let mut integrity = IntegrityServiceClient::new(server.channel().await);
    integrity
        .get_checkpoint(caller.request(GetCheckpointRequest {}))
        .await
        .expect("checkpoint")
        .into_inner()
        .verifier_key
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read export")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// 1-based numbers of the lines holding whole events (not erased ones, not
/// the header, chunk or checkpoint lines).
fn whole_event_lines(lines: &[String]) -> Vec<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let v = json(l);
            v.get("action").is_some_and(|a| a.as_str() != Some(""))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The event whose text fields need quoting in CSV.
fn awkward_event() -> EventInput {
    EventInput {
        resource: Some(proto::Resource {
            r#type: "document".into(),
            id: "doc-1".into(),
            name: "Q3, \"final\"\nsecond line".into(),
        }),
        reasoning: "because, as \"they\" said".into(),
        request: Some(RequestContext {
            status_code: 403,
            client_ip: "203.0.113.7".into(),
            client_identity: "spiffe://example.org/ns/docs/sa/editor".into(),
            ..Default::default()
        }),
        outcome: proto::Outcome::Failure.into(),
        metadata: Some(json_to_struct(serde_json::json!({
            "note": "a,b \"c\"",
            "ratio": AWKWARD_FLOAT,
            "nested": {"list": [1, "x", null, true]},
        }))),
        ..event("user.logout", "u4")
    }
}

/// A tenant with 30 events (even ones `user.logout`, the 4th awkward),
/// the 7th erased (its deletion record is seq 31): (caller, ids).
async fn small_log(server: &TestServer) -> (Caller, Vec<String>) {
    let mut caller = server.caller().await;
    let events = (1..=30)
        .map(|n| match n {
            4 => awkward_event(),
            n if n % 2 == 0 => event("user.logout", &format!("u{n}")),
            n => event("user.login", &format!("u{n}")),
        })
        .collect();
    let ids: Vec<String> = caller.append(events).await.into_iter().map(|r| r.id).collect();
    let request = caller.request(DeleteRequest {
        id: ids[6].clone(),
        reason: "erasure".into(),
    });
    caller.client.delete(request).await.expect("delete");
    (caller, ids)
}

const LOGOUTS: &str = "action = \"user.logout\"";

// ---- NDJSON -----------------------------------------------------------------

async fn ndjson_export_with_a_filter_and_an_erased_event_verifies_offline(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (caller, _) = small_log(&server).await;
    let key = service_key(&server, &caller).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = export_to(
        &server,
        dir.path(),
        "logouts.ndjson",
        &caller.tenant,
        &["--filter", LOGOUTS, "--format", "ndjson"],
    );
    let lines = read_lines(&file);

    let header = json(&lines[0]);
    assert_eq!(header["header"]["treeSize"], "31");
    assert_eq!(header["header"]["tenantId"], caller.tenant.as_str());
    assert_eq!(header["header"]["filter"]["expression"], LOGOUTS);
    let events: Vec<serde_json::Value> = lines[1..]
        .iter()
        .map(|l| json(l))
        .filter(|v| v.get("chunk").is_none() && v.get("checkpoint").is_none())
        .collect();
    let seqs: Vec<&str> = events.iter().map(|e| e["seq"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = (2..=30).step_by(2).map(|n| n.to_string()).collect();
    expected.insert(3, "7".into());
    assert_eq!(seqs, expected, "the logouts and the erased event, in seq order");
    let erased = &events[3];
    assert!(erased.get("action").is_none(), "erased: {erased}");
    for part in ["actor", "resource", "request"] {
        assert!(
            erased.get(part).is_none_or(|p| *p == serde_json::json!({})),
            "erased: {erased}"
        );
    }
    assert!(erased["id"].is_string() && erased["recordedAt"].is_string());
    let chunk = json(&lines[lines.len() - 2]);
    assert_eq!(chunk["chunk"]["resumeAfterSeq"], "31");
    assert!(
        chunk["chunk"].get("events").is_none(),
        "events are lines of their own"
    );
    assert_eq!(chunk["chunk"]["leafHashes"].as_array().unwrap().len(), 15);
    let checkpoint = json(lines.last().unwrap());
    assert_eq!(checkpoint["checkpoint"]["treeSize"], "31");

    let verified = verify_export(&file, &key);
    assert_intact(&verified);
    assert!(verified.stdout.contains("15 whole"), "{}", verified.stdout);
    assert!(verified.stdout.contains("1 erased"), "{}", verified.stdout);
}

async fn ndjson_lines_are_the_events_as_the_api_returns_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, _) = small_log(&server).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = export_to(
        &server,
        dir.path(),
        "all.ndjson",
        &caller.tenant,
        &["--format", "ndjson"],
    );
    let pool =
        prost_reflect::DescriptorPool::decode(audit_service::proto::FILE_DESCRIPTOR_SET).expect("pool");
    let descriptor = pool
        .get_message_by_name("audit.v1.AuditEvent")
        .expect("AuditEvent");
    let exported: Vec<proto::AuditEvent> = read_lines(&file)
        .iter()
        .filter(|l| {
            !l.starts_with("{\"header\"") && !l.starts_with("{\"chunk\"") && !l.starts_with("{\"checkpoint\"")
        })
        .map(|l| {
            let mut de = serde_json::Deserializer::from_str(l);
            prost_reflect::DynamicMessage::deserialize(descriptor.clone(), &mut de)
                .expect("an AuditEvent in the JSON mapping")
                .transcode_to()
                .expect("transcode")
        })
        .collect();
    assert_eq!(exported.len(), 31);
    let live = caller
        .query(QueryRequest {
            order_by: "seq asc".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .events;
    let whole: Vec<&proto::AuditEvent> = exported.iter().filter(|e| e.seq != 7).collect();
    assert_eq!(
        whole,
        live.iter().collect::<Vec<_>>(),
        "every live event as Query returns it"
    );
}

/// A whole event line of a fresh export of the small log, and the file.
async fn exported_small_log(server: &TestServer, dir: &Path) -> (PathBuf, Vec<String>, String) {
    let (caller, _) = small_log(server).await;
    let key = service_key(server, &caller).await;
    let file = export_to(server, dir, "log.ndjson", &caller.tenant, &["--format", "ndjson"]);
    assert_intact(&verify_export(&file, &key));
    let lines = read_lines(&file);
    (file, lines, key)
}

async fn a_changed_byte_in_an_event_line_is_tampering_at_that_line(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let (file, mut lines, key) = exported_small_log(&server, dir.path()).await;
    // Line 13 holds seq 12 (line 1 is the header): its actor becomes u13.
    let target = 13;
    assert!(
        lines[target - 1].contains("\"id\":\"u12\""),
        "{}",
        lines[target - 1]
    );
    lines[target - 1] = lines[target - 1].replace("\"id\":\"u12\"", "\"id\":\"u13\"");
    write_lines(&file, &lines);
    assert_tampered_at(&verify_export(&file, &key), target);
}

async fn a_byte_that_breaks_an_event_line_is_tampering_at_that_line(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let (file, mut lines, key) = exported_small_log(&server, dir.path()).await;
    let target = 20;
    let line = &mut lines[target - 1];
    assert!(line.ends_with('}'));
    line.pop();
    line.push(']');
    write_lines(&file, &lines);
    assert_tampered_at(&verify_export(&file, &key), target);
}

async fn a_removed_event_line_is_tampering(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let (file, lines, key) = exported_small_log(&server, dir.path()).await;
    let whole = whole_event_lines(&lines);
    // One in the middle, and the last event before the chunk line.
    for removed in [whole[10], *whole.last().unwrap()] {
        let mut edited = lines.clone();
        edited.remove(removed - 1);
        write_lines(&file, &edited);
        assert_tampered_at(&verify_export(&file, &key), removed);
    }
}

async fn swapped_event_lines_are_tampering(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let (file, lines, key) = exported_small_log(&server, dir.path()).await;
    let whole = whole_event_lines(&lines);
    for (a, b) in [(whole[2], whole[3]), (whole[5], whole[20])] {
        let mut swapped = lines.clone();
        swapped.swap(a - 1, b - 1);
        write_lines(&file, &swapped);
        assert_tampered_at(&verify_export(&file, &key), a);
    }
}

/// What a SIEM reads from a line must be what was proved: a key given
/// twice (a parser keeping the first sees another value than one keeping
/// the last), a field under its proto name beside its JSON name, or a
/// value in another JSON form than the writer's are not what was written.
async fn an_event_line_that_reads_otherwise_than_it_hashes_is_tampering(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let (file, lines, key) = exported_small_log(&server, dir.path()).await;
    let target = 13;
    let original = &lines[target - 1];
    assert!(original.starts_with('{') && original.contains("\"action\":\"user.logout\""));
    let edits = [
        original.replacen('{', "{\"action\":\"user.deleted_everything\",", 1),
        original.replacen('{', "{\"tenant_id\":\"another-tenant\",", 1),
        original.replacen("\"seq\":\"12\"", "\"seq\":12", 1),
    ];
    for edited in edits {
        let mut tampered = lines.clone();
        tampered[target - 1] = edited.clone();
        write_lines(&file, &tampered);
        let run = verify_export(&file, &key);
        assert!(run.code == 2, "{edited}\n{}", run.output());
        assert_tampered_at(&run, target);
    }
}

async fn a_changed_checkpoint_is_tampering_and_another_key_cannot_check(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let (file, lines, key) = exported_small_log(&server, dir.path()).await;

    let other = SigningKey::generate("audit-service")
        .expect("key")
        .verifier()
        .encode();
    assert_cannot_check(&verify_export(&file, &other), "no signature by key");
    assert_cannot_check(&verify_export(&file, "not-a-key"), "key");
    assert_cannot_check(
        &verify_export(&dir.path().join("absent.ndjson"), &key),
        "absent.ndjson",
    );

    // The signed note says 31 events; claim 30.
    let last = lines.len();
    let mut edited = lines.clone();
    let mut checkpoint = json(&lines[last - 1]);
    let note = checkpoint["checkpoint"]["note"].as_str().unwrap().to_owned();
    checkpoint["checkpoint"]["note"] = note.replacen("\n31\n", "\n30\n", 1).into();
    edited[last - 1] = checkpoint.to_string();
    write_lines(&file, &edited);
    assert_tampered_at(&verify_export(&file, &key), last);

    // A line after the checkpoint is not covered by it.
    let mut appended = lines.clone();
    appended.push(lines[5].clone());
    write_lines(&file, &appended);
    assert_tampered_at(&verify_export(&file, &key), last + 1);
}

// ---- resuming ---------------------------------------------------------------

/// A tenant with 1 200 events: two chunks.
async fn log_of_1200(server: &TestServer) -> Caller {
    let mut caller = server.caller().await;
    for round in 0..2 {
        let batch = (0..if round == 0 { 1000 } else { 200 })
            .map(|i| event("user.login", &format!("u{round}-{i}")))
            .collect();
        caller.append(batch).await;
    }
    caller
}

fn event_seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| json(l))
        .filter_map(|v| v.get("seq").and_then(|s| s.as_str()).map(|s| s.parse().unwrap()))
        .collect()
}

async fn an_export_resumed_with_after_seq_holds_the_rest_and_verifies(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (caller, _) = small_log(&server).await;
    let key = service_key(&server, &caller).await;
    let dir = tempfile::tempdir().expect("dir");
    let rest = export_to(
        &server,
        dir.path(),
        "rest.ndjson",
        &caller.tenant,
        &["--after-seq", "12", "--format", "ndjson"],
    );
    let lines = read_lines(&rest);
    assert_eq!(json(&lines[0])["header"]["afterSeq"], "12");
    assert_eq!(event_seqs(&lines), (13..=31).collect::<Vec<_>>());
    assert_intact(&verify_export(&rest, &key));
}

async fn an_interrupted_export_cannot_be_checked_and_says_where_to_resume(backend: Backend) {
    let server = TestServer::start(backend).await;
    let caller = log_of_1200(&server).await;
    let key = service_key(&server, &caller).await;
    let dir = tempfile::tempdir().expect("dir");
    let whole = export_to(
        &server,
        dir.path(),
        "whole.ndjson",
        &caller.tenant,
        &["--format", "ndjson"],
    );
    let lines = read_lines(&whole);
    let first_chunk = lines
        .iter()
        .position(|l| l.starts_with("{\"chunk\""))
        .expect("a chunk line");
    let resume = json(&lines[first_chunk])["chunk"]["resumeAfterSeq"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(resume.parse::<u64>().unwrap() < 1200, "two chunks at least");

    // Cut after the first chunk line and half an event line.
    let interrupted = dir.path().join("interrupted.ndjson");
    let mut text: String = lines[..=first_chunk].iter().map(|l| format!("{l}\n")).collect();
    text.push_str(&lines[first_chunk + 1][..20]);
    std::fs::write(&interrupted, text).expect("write");
    assert_cannot_check(
        &verify_export(&interrupted, &key),
        &format!("--after-seq {resume}"),
    );

    let rest = export_to(
        &server,
        dir.path(),
        "rest.ndjson",
        &caller.tenant,
        &["--after-seq", &resume, "--format", "ndjson"],
    );
    assert_intact(&verify_export(&rest, &key));
    let mut seqs = event_seqs(&lines[..=first_chunk]);
    seqs.extend(event_seqs(&read_lines(&rest)));
    assert_eq!(
        seqs,
        (1..=1200).collect::<Vec<_>>(),
        "the two parts hold every event once"
    );
}

// ---- CSV --------------------------------------------------------------------

async fn csv_export_has_the_documented_columns_and_rfc_4180_quoting(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = small_log(&server).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = export_to(
        &server,
        dir.path(),
        "logouts.csv",
        &caller.tenant,
        &["--filter", LOGOUTS, "--format", "csv"],
    );
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.contains("\"Q3, \"\"final\"\"\nsecond line\""),
        "quotes doubled, the field quoted:\n{text}"
    );

    let mut reader = csv::Reader::from_path(&file).expect("csv");
    let headers: Vec<String> = reader
        .headers()
        .expect("header row")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(headers, CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    let seqs: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    let mut expected: Vec<String> = (2..=30).step_by(2).map(|n| n.to_string()).collect();
    expected.insert(3, "7".into());
    assert_eq!(seqs, expected);

    let column = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
    let erased = &rows[3];
    assert_eq!(&erased[column("id")], ids[6].as_str());
    assert_eq!(&erased[column("erased")], "true");
    assert_eq!(&erased[column("action")], "");
    assert_eq!(&erased[column("metadata")], "");

    let awkward = &rows[1];
    let api = caller
        .client
        .get(caller.request(GetRequest { id: ids[3].clone() }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(&awkward[column("id")], api.id.as_str());
    assert_eq!(&awkward[column("resource_name")], "Q3, \"final\"\nsecond line");
    assert_eq!(&awkward[column("reasoning")], "because, as \"they\" said");
    assert_eq!(&awkward[column("outcome")], "OUTCOME_FAILURE");
    assert_eq!(&awkward[column("actor_type")], "ACTOR_TYPE_UNSPECIFIED");
    assert_eq!(&awkward[column("request_status_code")], "403");
    assert_eq!(&awkward[column("request_client_ip")], "203.0.113.7");
    assert_eq!(
        &awkward[column("request_client_identity")],
        "spiffe://example.org/ns/docs/sa/editor"
    );
    assert_eq!(&awkward[column("erased")], "false");
    let recorded = api.recorded_at.expect("recorded_at");
    let recorded =
        chrono::DateTime::from_timestamp(recorded.seconds, recorded.nanos.cast_unsigned()).unwrap();
    let csv_recorded: chrono::DateTime<chrono::Utc> =
        awkward[column("recorded_at")].parse().expect("RFC 3339");
    assert_eq!(csv_recorded, recorded);
    let metadata: serde_json::Value = serde_json::from_str(&awkward[column("metadata")]).expect("JSON");
    assert_eq!(
        metadata,
        serde_json::json!({"note": "a,b \"c\"", "ratio": AWKWARD_FLOAT, "nested": {"list": [1.0, "x", null, true]}})
    );
}

// ---- edges ------------------------------------------------------------------

async fn exports_of_no_events_verify(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("dir");

    // An empty log, written to standard output.
    let empty = server.caller().await;
    let key = service_key(&server, &empty).await;
    let out = run(
        &server,
        &["export", "--tenant", &empty.tenant, "--format", "ndjson"],
    );
    assert_eq!(out.code, 0, "{}", out.output());
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "a header and the checkpoint:\n{}", out.stdout);
    assert_eq!(
        json(&lines[1])["checkpoint"]["treeSize"].as_str().unwrap_or("0"),
        "0"
    );
    let file = dir.path().join("empty.ndjson");
    write_lines(&file, &lines);
    let verified = verify_export(&file, &key);
    assert_intact(&verified);
    assert!(verified.stdout.contains("0 whole"), "{}", verified.stdout);

    let out = run(&server, &["export", "--tenant", &empty.tenant, "--format", "csv"]);
    assert_eq!(out.code, 0, "{}", out.output());
    assert_eq!(
        out.stdout,
        format!("{}\r\n", CSV_COLUMNS.join(",")),
        "the header row, CRLF-terminated"
    );

    // A filter nothing matches: chunk lines only, every seq a subtree.
    let (caller, _) = small_log(&server).await;
    let key = service_key(&server, &caller).await;
    let file = export_to(
        &server,
        dir.path(),
        "none.ndjson",
        &caller.tenant,
        &[
            "--filter",
            "action = \"nothing.matches\"",
            "--after-seq",
            "7",
            "--format",
            "ndjson",
        ],
    );
    assert!(event_seqs(&read_lines(&file)).is_empty());
    assert_intact(&verify_export(&file, &key));
}

async fn export_refuses_a_bad_filter_and_a_position_beyond_the_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (caller, _) = small_log(&server).await;
    let bad = run(
        &server,
        &[
            "export",
            "--tenant",
            &caller.tenant,
            "--filter",
            "action =",
            "--format",
            "ndjson",
        ],
    );
    assert_eq!(bad.code, 1, "{}", bad.output());
    assert!(bad.stderr.contains("filter"), "{}", bad.output());
    let beyond = run(
        &server,
        &[
            "export",
            "--tenant",
            &caller.tenant,
            "--after-seq",
            "32",
            "--format",
            "csv",
        ],
    );
    assert_eq!(beyond.code, 1, "{}", beyond.output());
    assert!(
        beyond.stderr.contains("after_seq") || beyond.stderr.contains("after-seq"),
        "{}",
        beyond.output()
    );
}

async fn metadata_numbers_export_and_verify_exactly(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let floats = [AWKWARD_FLOAT, 1.071_566_039_146_582_6e-75, 0.1, -2.5e300];
    let mut input = event("metrics.sampled", "probe");
    input.metadata = Some(json_to_struct(serde_json::json!({ "values": floats })));
    caller.append(vec![input]).await;
    let key = service_key(&server, &caller).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = export_to(
        &server,
        dir.path(),
        "floats.ndjson",
        &caller.tenant,
        &["--format", "ndjson"],
    );
    let exported: Vec<f64> = json(&read_lines(&file)[1])["metadata"]["values"]
        .as_array()
        .expect("the values")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect();
    assert_eq!(
        exported.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
        floats.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
        "written bit for bit: {exported:?}"
    );
    assert_intact(&verify_export(&file, &key));
}

async fn progress_is_drawn_on_a_terminal_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let caller = log_of_1200(&server).await;
    let dir = tempfile::tempdir().expect("dir");
    let piped = run(
        &server,
        &[
            "export",
            "--tenant",
            &caller.tenant,
            "--format",
            "csv",
            "--output",
            "/dev/null",
        ],
    );
    assert_eq!(piped.code, 0, "{}", piped.output());
    assert!(
        !piped.stderr.contains("/1200 seqs"),
        "no bar without a terminal:\n{}",
        piped.stderr
    );

    // `script` gives the command a pseudo-terminal and records what it drew.
    let output = dir.path().join("out.csv");
    let command = format!(
        "{} export --tenant {} --format csv --output {}",
        env!("CARGO_BIN_EXE_audit-service"),
        caller.tenant,
        output.display()
    );
    let typescript = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DATABASE_URL", &server.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run script");
    let drawn = String::from_utf8_lossy(&typescript.stdout);
    assert!(typescript.status.success(), "{drawn}");
    assert!(
        drawn.contains("1200/1200 seqs"),
        "a finished bar on the terminal:\n{drawn}"
    );
}

/// Peak resident memory (KiB) of `audit-service ARGS`, by GNU time.
fn peak_rss_kib(server: &TestServer, args: &[&str]) -> u64 {
    let output = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak %M"])
        .arg(env!("CARGO_BIN_EXE_audit-service"))
        .args(args)
        .env("DATABASE_URL", &server.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service under /usr/bin/time");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak "))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in {stderr}"))
}

async fn exporting_a_large_log_keeps_memory_flat(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_large_events(&mut caller).await;
    let empty = server.caller().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("large.ndjson");
    let file_text = file.to_str().expect("utf-8 path");

    let baseline = peak_rss_kib(
        &server,
        &[
            "export",
            "--tenant",
            &empty.tenant,
            "--format",
            "ndjson",
            "--output",
            file_text,
        ],
    );
    let mut peaks = Vec::new();
    for format in ["ndjson", "csv"] {
        peaks.push(peak_rss_kib(
            &server,
            &[
                "export",
                "--tenant",
                &caller.tenant,
                "--format",
                format,
                "--output",
                file_text,
            ],
        ));
    }
    let written = std::fs::metadata(&file).expect("csv file").len();
    eprintln!(
        "export of {EVENTS} events (csv {written} bytes): peak RSS {peaks:?} KiB (ndjson, csv), {baseline} KiB for an empty log"
    );
    // Each chunk holds at most 1 MiB of events, and the command holds at
    // most two (one read ahead) and the one it writes, decoded; the whole
    // log is ~70 MB. Measured 19-34 MiB.
    for peak in peaks {
        assert!(
            peak.saturating_sub(baseline) < 48 * 1024,
            "the export grew by {} KiB over an empty one",
            peak.saturating_sub(baseline)
        );
    }
}
