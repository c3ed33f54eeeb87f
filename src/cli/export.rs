//! `audit-service export`: a tenant's log written to a file from the
//! database, chunk by chunk as the `Export` RPC streams it (the same
//! messages, from the same code), each chunk written before the next is
//! read, so memory stays flat whatever the log's size.
//!
//! NDJSON (see docs/export.md): line 1 `{"header": ExportHeader}`; per
//! chunk, one `AuditEvent` per line, then `{"chunk": ExportChunk}` with its
//! `events` left empty (the leaf hashes, skipped subtrees and resume
//! position); last `{"checkpoint": Checkpoint}`. Every line is in
//! protobuf's canonical JSON mapping. CSV: [`CSV_COLUMNS`], events only,
//! no proof.

use std::io::{IsTerminal as _, Write};

use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::proto_json::ProtoJson;
use crate::api::export_stream;
use crate::integrity::Notary;
use crate::proto::export_response::Part;
use crate::proto::{ActorType, AuditEvent, ExportRequest, ExportResponse, Outcome};
use crate::store::Store;
use crate::tenant::TenantId;

/// What an export file holds.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The export's messages, one JSON object a line, provable offline
    /// with `verify-export`.
    Ndjson,
    /// One row per event, for spreadsheets; carries no proof.
    Csv,
}

/// The columns of a CSV export, in order. Times are RFC 3339 (UTC), enums
/// by name, `metadata` the JSON object, `erased` `true` or `false`; a text
/// field the event does not have is empty.
pub const CSV_COLUMNS: [&str; 24] = [
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

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// It covers seqs `after_seq + 1 ..= tree_size`.
    pub after_seq: u64,
    /// The head as of the export: the size of the checkpoint's tree.
    pub tree_size: u64,
    /// Events written whole.
    pub events: u64,
    /// Erased events written (seq, id and `recorded_at` only).
    pub erased: u64,
    /// The key that signed the checkpoint, in verifier-key form.
    pub verifier_key: String,
}

/// A progress bar over the export's seqs on standard error when it is a
/// terminal; hidden otherwise.
pub fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} seqs, {msg} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Exports `tenant`'s log as `request` selects, in `format`, to `out`,
/// advancing `progress` after each chunk. An interrupted export has written
/// whole chunks: NDJSON's last chunk line names where to resume.
pub async fn export(
    store: Store,
    notary: &Notary,
    tenant: TenantId,
    request: ExportRequest,
    format: ExportFormat,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> anyhow::Result<ExportReport> {
    let json = ProtoJson::new()?;
    let mut stream = export_stream(store, notary, tenant, request)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut sink = match format {
        ExportFormat::Ndjson => Sink::Ndjson(out),
        ExportFormat::Csv => Sink::Csv(Box::new(
            csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(out),
        )),
    };
    let mut report = ExportReport::default();
    let mut finished = false;
    while let Some(message) = stream.next().await {
        let message = message
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?
            .decode_message()?;
        match message.part {
            Some(Part::Header(header)) => {
                report.after_seq = header.after_seq;
                report.tree_size = header.tree_size;
                progress.set_length(header.tree_size - header.after_seq);
                match &mut sink {
                    Sink::Csv(csv) => csv.write_record(CSV_COLUMNS)?,
                    Sink::Ndjson(out) => json_line(out, &json, Part::Header(header))?,
                }
            }
            Some(Part::Chunk(mut chunk)) => {
                let events = std::mem::take(&mut chunk.events);
                for event in &events {
                    if event.action.is_empty() {
                        report.erased += 1;
                    } else {
                        report.events += 1;
                    }
                    match &mut sink {
                        Sink::Csv(csv) => csv.write_record(csv_row(&json, event)?)?,
                        Sink::Ndjson(out) => {
                            json.write_event(out, event)?;
                            out.write_all(b"\n")?;
                        }
                    }
                }
                let through = chunk.resume_after_seq;
                match &mut sink {
                    Sink::Csv(csv) => csv.flush()?,
                    Sink::Ndjson(out) => {
                        json_line(out, &json, Part::Chunk(chunk))?;
                        out.flush()?;
                    }
                }
                progress.set_position(through - report.after_seq);
                progress.set_message(format!("{} events", report.events + report.erased));
            }
            Some(Part::Checkpoint(checkpoint)) => {
                report.verifier_key.clone_from(&checkpoint.verifier_key);
                if let Sink::Ndjson(out) = &mut sink {
                    json_line(out, &json, Part::Checkpoint(checkpoint))?;
                }
                finished = true;
            }
            None => anyhow::bail!("the export stream sent an empty message"),
        }
    }
    match &mut sink {
        Sink::Csv(csv) => csv.flush()?,
        Sink::Ndjson(out) => out.flush()?,
    }
    progress.finish();
    anyhow::ensure!(finished, "the export stream ended before its checkpoint");
    Ok(report)
}

/// Where the file's bytes go, as its format writes them.
enum Sink<'a, W: Write> {
    Ndjson(&'a mut W),
    Csv(Box<csv::Writer<&'a mut W>>),
}

/// Writes `part` as one line `{"header"|"chunk"|"checkpoint": ...}`.
fn json_line(out: &mut impl Write, json: &ProtoJson, part: Part) -> anyhow::Result<()> {
    json.write_response(out, &ExportResponse { part: Some(part) })?;
    out.write_all(b"\n")?;
    Ok(())
}

/// The event's fields in [`CSV_COLUMNS`] order.
fn csv_row(json: &ProtoJson, event: &AuditEvent) -> anyhow::Result<Vec<String>> {
    let erased = event.action.is_empty();
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(ToString::to_string).unwrap_or_default();
    let text = |s: &str| s.to_owned();
    let actor = event.actor.clone().unwrap_or_default();
    let resource = event.resource.clone().unwrap_or_default();
    let request = event.request.clone().unwrap_or_default();
    let metadata = match &event.metadata {
        Some(metadata) => {
            let mut out = Vec::new();
            json.write_metadata(&mut out, metadata)?;
            String::from_utf8(out)?
        }
        None => String::new(),
    };
    let (actor_type, outcome) = if erased {
        (String::new(), String::new())
    } else {
        (
            ActorType::try_from(actor.r#type)
                .map_or_else(|_| actor.r#type.to_string(), |t| t.as_str_name().to_owned()),
            Outcome::try_from(event.outcome)
                .map_or_else(|_| event.outcome.to_string(), |o| o.as_str_name().to_owned()),
        )
    };
    Ok(vec![
        event.seq.to_string(),
        text(&event.id),
        time(&event.occurred_at),
        time(&event.recorded_at),
        actor.id,
        actor_type,
        actor.name,
        actor.email,
        text(&event.action),
        resource.r#type,
        resource.id,
        resource.name,
        outcome,
        request.method,
        request.path,
        match request.status_code {
            0 => String::new(),
            code => code.to_string(),
        },
        request.client_ip,
        request.user_agent,
        request.request_id,
        request.client_identity,
        text(&event.source),
        text(&event.reasoning),
        metadata,
        erased.to_string(),
    ])
}
