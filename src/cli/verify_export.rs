//! `audit-service verify-export`: checks an NDJSON export offline, with no
//! database, against the verifier key the operator pinned.
//!
//! Line by line, holding one chunk's leaf hashes at most: each whole event
//! is read back into an `AuditEvent` and its leaf recomputed
//! (`SHA-256(0x00 || AuditEvent.encode())`); at the chunk line that closes
//! them, each must equal the leaf the log stored for it, and the events and
//! the chunk's skipped subtrees, merged in seq order, extend the tree that
//! starts from the header's prefix ([`ExportVerifier`]); the checkpoint's
//! note must carry a valid signature of the key, and its tree size and root
//! must be the rebuilt tree's.
//!
//! Tampered (exit 2, naming the first bad line) is anything in a file that
//! starts as an export and that no export writes: a line that is not JSON or
//! not one of the export's messages, an event whose leaf is not the stored
//! one, a line out of seq order, removed, repeated or added, hashes that do
//! not rebuild the signed root, a signature of the key that does not verify,
//! a line after the checkpoint. Could not check (exit 1): the file cannot
//! be read, is empty or does not start with an export header, the key is
//! malformed, the checkpoint carries no signature of the key (another key
//! was given, or the checkpoint is another signer's), or the file ends
//! before its checkpoint (an interrupted export: the message says where to
//! resume).
//!
//! Erased events are shown (id, seq, `recorded_at`), not proved: their
//! seqs lie inside skipped subtrees. A filtered export cannot prove that
//! its skipped subtrees hide only events outside the filter; an export
//! without a filter must show an erased-event line for every skipped seq.

use std::io::BufRead;

use prost::Message as _;

use super::proto_json::ProtoJson;
use crate::integrity::export::{ExportMismatch, ExportVerifier};
use crate::integrity::merkle::leaf_hash;
use crate::integrity::{CheckpointError, Hash, VerifierKey};
use crate::proto::export_response::Part;
use crate::proto::{AuditEvent, Checkpoint, EventFilter, ExportChunk, ExportHeader};

/// What an intact export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The tenant the header names.
    pub tenant: String,
    /// The signed log's name.
    pub origin: String,
    /// The filter the header names (JSON), if any.
    pub filter: Option<String>,
    /// The export covers seqs `after_seq + 1 ..= tree_size`.
    pub after_seq: u64,
    /// The signed tree's size.
    pub tree_size: u64,
    /// Its root hash.
    pub root: Hash,
    /// Whole events, each proved.
    pub whole: u64,
    /// Erased events shown.
    pub erased: u64,
    /// Seqs covered by skipped subtrees (the erased ones among them).
    pub skipped: u64,
    /// When the checkpoint was signed, unix microseconds.
    pub signed_at_micros: i64,
}

/// The verdict on a file that could be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportVerdict {
    /// Every whole event is in the signed log, unchanged, at its seq.
    Intact(ExportSummary),
    /// The file is not what the log signed.
    Tampered {
        /// The first line found bad (1-based).
        line: u64,
        /// What is wrong with it.
        what: String,
    },
}

/// Why a file could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CannotCheck(pub String);

/// Checks the NDJSON export `input` against `key`.
pub fn verify_export(input: impl BufRead, key: &VerifierKey) -> Result<ExportVerdict, CannotCheck> {
    let json = ProtoJson::new().map_err(|e| CannotCheck(format!("{e:#}")))?;
    let mut check = Check {
        json,
        key,
        state: None,
        pending: Vec::new(),
        whole: 0,
        erased: 0,
        skipped: 0,
    };
    match check.run(input) {
        Ok(summary) => Ok(ExportVerdict::Intact(summary)),
        Err(Stop::Tampered(line, what)) => Ok(ExportVerdict::Tampered { line, what }),
        Err(Stop::CannotCheck(why)) => Err(CannotCheck(why)),
    }
}

enum Stop {
    Tampered(u64, String),
    CannotCheck(String),
}

fn tampered<T>(line: u64, what: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Tampered(line, what.into()))
}

/// One parsed line.
enum Line {
    Event(Box<AuditEvent>),
    Part(Box<Part>),
}

/// An event line waiting for the chunk line that closes it.
struct Pending {
    line: u64,
    seq: u64,
    /// The recomputed leaf; `None` for an erased event.
    leaf: Option<Hash>,
}

/// What the header established.
struct Started {
    header: ExportHeader,
    tree: ExportVerifier,
    /// The last chunk's resume position (the header's `after_seq` before).
    resume: u64,
}

struct Check<'k> {
    json: ProtoJson,
    key: &'k VerifierKey,
    state: Option<Started>,
    pending: Vec<Pending>,
    whole: u64,
    erased: u64,
    skipped: u64,
}

impl Check<'_> {
    fn run(&mut self, mut input: impl BufRead) -> Result<ExportSummary, Stop> {
        let mut buf = Vec::new();
        let mut number = 0u64;
        let mut summary = None;
        loop {
            buf.clear();
            let read = input
                .read_until(b'\n', &mut buf)
                .map_err(|e| Stop::CannotCheck(format!("reading line {}: {e}", number + 1)))?;
            if read == 0 {
                break;
            }
            number += 1;
            if summary.is_some() {
                return tampered(number, "a line after the checkpoint, which does not cover it");
            }
            let line = match self.parse(&buf) {
                Ok(line) => line,
                Err(why) if !buf.ends_with(b"\n") => {
                    return Err(Stop::CannotCheck(format!(
                        "the file ends in the middle of line {number} ({why}): an interrupted export; {}",
                        self.resume_hint()
                    )));
                }
                Err(why) if number == 1 => {
                    return Err(Stop::CannotCheck(format!(
                        "line 1 is not an export header ({why}): not an NDJSON export"
                    )));
                }
                Err(why) => return tampered(number, why),
            };
            if self.state.is_none() {
                let not_an_export =
                    || Stop::CannotCheck("line 1 is not an export header: not an NDJSON export".into());
                let Line::Part(part) = line else {
                    return Err(not_an_export());
                };
                let Part::Header(header) = *part else {
                    return Err(not_an_export());
                };
                self.start(header)?;
                continue;
            }
            match line {
                Line::Event(event) => self.event(number, &event),
                Line::Part(part) => match *part {
                    Part::Header(_) => return tampered(number, "a second header"),
                    Part::Chunk(chunk) => self.chunk(number, chunk)?,
                    Part::Checkpoint(checkpoint) => summary = Some(self.finish(number, &checkpoint)?),
                },
            }
        }
        match summary {
            Some(summary) => Ok(summary),
            None if number == 0 => Err(Stop::CannotCheck(
                "the file is empty: not an NDJSON export".into(),
            )),
            None => Err(Stop::CannotCheck(format!(
                "the file ends after line {number} without its checkpoint line: an interrupted export; {}",
                self.resume_hint()
            ))),
        }
    }

    fn resume_hint(&self) -> String {
        match &self.state {
            Some(started) => format!(
                "its whole chunks end at seq {0}: export the rest with --after-seq {0}",
                started.resume
            ),
            None => "nothing in it can be checked".into(),
        }
    }

    /// A line as one of the export's messages: an object whose one key is
    /// `header`, `chunk` or `checkpoint` is an `ExportResponse`; any other
    /// object an `AuditEvent`. The line must read as exactly what the
    /// message it decodes to is written as: no key twice, no field under
    /// another name, no value in another JSON form. Otherwise a tool
    /// reading the line could see other values than were proved (a parser
    /// that keeps the first of two `action` keys, one that knows only
    /// `tenantId`).
    fn parse(&self, bytes: &[u8]) -> Result<Line, String> {
        serde_json::from_slice::<UniqueKeys>(bytes).map_err(|e| format!("not JSON with unique keys: {e}"))?;
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let is_part = value.as_object().is_some_and(|object| {
            object.len() == 1
                && ["header", "chunk", "checkpoint"]
                    .iter()
                    .any(|k| object.contains_key(*k))
        });
        let mut canonical = Vec::new();
        let line = if is_part {
            let response = self
                .json
                .response(value.clone())
                .map_err(|e| format!("not an export message: {e}"))?;
            self.json
                .write_response(&mut canonical, &response)
                .map_err(|e| format!("not an export message: {e:#}"))?;
            response
                .part
                .map(|part| Line::Part(Box::new(part)))
                .ok_or_else(|| "an empty export message".to_owned())?
        } else {
            let event = self
                .json
                .event(value.clone())
                .map_err(|e| format!("not an AuditEvent: {e}"))?;
            self.json
                .write_event(&mut canonical, &event)
                .map_err(|e| format!("not an AuditEvent: {e:#}"))?;
            Line::Event(Box::new(event))
        };
        let canonical: serde_json::Value =
            serde_json::from_slice(&canonical).map_err(|e| format!("cannot be written back: {e}"))?;
        if canonical != value {
            return Err(
                "not in the form the export writes (a field renamed, repeated or added, or a value written otherwise)"
                    .into(),
            );
        }
        Ok(line)
    }

    fn start(&mut self, header: ExportHeader) -> Result<(), Stop> {
        if header.after_seq > header.tree_size {
            return tampered(
                1,
                format!(
                    "the header starts after seq {} of a tree of {}",
                    header.after_seq, header.tree_size
                ),
            );
        }
        let prefix = header
            .prefix
            .iter()
            .map(|h| hash(h, 1, "a prefix hash"))
            .collect::<Result<Vec<Hash>, Stop>>()?;
        let tree = ExportVerifier::new(header.after_seq, prefix).or_else(|e| tampered(1, e.to_string()))?;
        self.state = Some(Started {
            resume: header.after_seq,
            header,
            tree,
        });
        Ok(())
    }

    fn event(&mut self, line: u64, event: &AuditEvent) {
        // Erased events keep id, seq and `recorded_at`; every event the
        // service records has an action.
        let leaf = (!event.action.is_empty()).then(|| leaf_hash(&event.encode_to_vec()));
        self.pending.push(Pending {
            line,
            seq: event.seq,
            leaf,
        });
    }

    /// Closes the event lines above `line` with their chunk: each whole
    /// event's leaf against the stored one, then events and skipped
    /// subtrees into the tree in seq order.
    fn chunk(&mut self, line: u64, chunk: ExportChunk) -> Result<(), Stop> {
        let Some(started) = self.state.as_mut() else {
            return tampered(line, "a chunk before the header");
        };
        if !chunk.events.is_empty() {
            return tampered(
                line,
                "a chunk line carrying events (each event is a line of its own)",
            );
        }
        let stored = chunk
            .leaf_hashes
            .iter()
            .map(|h| hash(h, line, "a leaf hash"))
            .collect::<Result<Vec<Hash>, Stop>>()?;
        let unfiltered = started
            .header
            .filter
            .as_ref()
            .is_none_or(|f| *f == EventFilter::default());
        let tree = &mut started.tree;
        let mut nodes = chunk.skipped.iter().peekable();
        let mut covered_by_nodes = 0u64;
        let mut erased = 0u64;
        let mut next_leaf = 0usize;
        let mut last_seq = tree.next_seq() - 1;
        for pending in std::mem::take(&mut self.pending) {
            // The subtrees before this event (an erased event lies inside one).
            let limit = pending.seq.saturating_add(u64::from(pending.leaf.is_none()));
            while let Some(node) = nodes.next_if(|n| first_seq(n.level, n.index) < limit) {
                let due = tree.next_seq();
                covered_by_nodes = covered_by_nodes.saturating_add(width(node.level));
                tree.subtree(node.level, node.index, hash(&node.hash, line, "a subtree hash")?)
                    .or_else(|_| {
                        tampered(
                            pending.line,
                            format!(
                                "seq {due} was due next, this line is seq {}: a line before it was removed, moved or changed",
                                pending.seq
                            ),
                        )
                    })?;
            }
            if pending.seq <= last_seq {
                return tampered(
                    pending.line,
                    format!(
                        "seq {} comes after seq {last_seq}: lines out of order or repeated",
                        pending.seq
                    ),
                );
            }
            last_seq = pending.seq;
            let Some(leaf) = pending.leaf else {
                if pending.seq >= tree.next_seq() {
                    return tampered(
                        pending.line,
                        format!(
                            "erased event seq {} is not covered by the subtrees of its chunk (line {line})",
                            pending.seq
                        ),
                    );
                }
                erased += 1;
                continue;
            };
            if pending.seq != tree.next_seq() {
                return tampered(
                    pending.line,
                    format!(
                        "seq {} was due next, this line is seq {}: a line was removed, added or moved",
                        tree.next_seq(),
                        pending.seq
                    ),
                );
            }
            let Some(expected) = stored.get(next_leaf) else {
                return tampered(
                    pending.line,
                    format!(
                        "its chunk (line {line}) stores {} leaf hashes, fewer than its whole events: an event line was added",
                        stored.len()
                    ),
                );
            };
            if *expected != leaf {
                return tampered(
                    pending.line,
                    format!(
                        "event seq {} does not hash to the leaf the log stored for it (leaf {} of line {line}): its content was changed",
                        pending.seq,
                        next_leaf + 1
                    ),
                );
            }
            next_leaf += 1;
            tree.event(pending.seq, leaf)
                .or_else(|e| tampered(pending.line, e.to_string()))?;
        }
        for node in nodes {
            let due = tree.next_seq();
            covered_by_nodes = covered_by_nodes.saturating_add(width(node.level));
            tree.subtree(node.level, node.index, hash(&node.hash, line, "a subtree hash")?)
                .or_else(|_| {
                    tampered(
                        line,
                        format!("seq {due} was due next, the chunk's next subtree does not start there: an event line above was removed"),
                    )
                })?;
        }
        if next_leaf < stored.len() {
            return tampered(
                line,
                format!(
                    "the chunk stores {} leaf hashes, the lines above it hold {next_leaf} whole events: an event line was removed",
                    stored.len()
                ),
            );
        }
        let covered = tree.next_seq() - 1;
        if covered != chunk.resume_after_seq {
            return tampered(
                line,
                format!(
                    "the chunk says it covers up to seq {}, its lines cover up to seq {covered}",
                    chunk.resume_after_seq
                ),
            );
        }
        if unfiltered && covered_by_nodes != erased {
            return tampered(
                line,
                format!(
                    "an export without a filter shows every seq, yet {} seqs of this chunk are covered by subtrees without an erased-event line: event lines were removed",
                    covered_by_nodes - erased.min(covered_by_nodes)
                ),
            );
        }
        started.resume = covered;
        self.whole += u64::try_from(next_leaf).unwrap_or(u64::MAX);
        self.erased += erased;
        self.skipped += covered_by_nodes;
        Ok(())
    }

    fn finish(&mut self, line: u64, checkpoint: &Checkpoint) -> Result<ExportSummary, Stop> {
        if let Some(first) = self.pending.first() {
            return tampered(
                first.line,
                "an event line after the last chunk line: its chunk line is missing",
            );
        }
        let Some(started) = self.state.as_ref() else {
            return tampered(line, "a checkpoint before the header");
        };
        let signed = match self.key.open(&checkpoint.note) {
            Ok(signed) => signed,
            Err(CheckpointError::Unsigned(_)) => {
                let signers: Vec<&str> = checkpoint
                    .note
                    .lines()
                    .filter_map(|l| l.strip_prefix("\u{2014} "))
                    .filter_map(|l| l.split(' ').next())
                    .collect();
                return Err(Stop::CannotCheck(format!(
                    "the checkpoint (line {line}) carries no signature by key {} (its signers: {}): give the key of the service that wrote the export; if it is that key, the checkpoint was replaced",
                    self.key.encode(),
                    signers.join(", ")
                )));
            }
            Err(error) => return tampered(line, format!("the checkpoint's note: {error}")),
        };
        let signed = signed.checkpoint;
        if checkpoint.origin != signed.origin
            || checkpoint.tree_size != signed.size
            || checkpoint.root_hash != signed.root
        {
            return tampered(
                line,
                "the checkpoint's origin, tree size or root hash differ from its signed note",
            );
        }
        let header = &started.header;
        if header.tree_size != signed.size {
            return tampered(
                1,
                format!(
                    "the header says the export ends at tree size {}, the signed checkpoint is of {}",
                    header.tree_size, signed.size
                ),
            );
        }
        if !header.tenant_id.is_empty() && !signed.origin.ends_with(&format!("/{}", header.tenant_id)) {
            return tampered(
                1,
                format!(
                    "the header names tenant {}, the checkpoint is of log {}",
                    header.tenant_id, signed.origin
                ),
            );
        }
        started.tree.finish(&signed).or_else(|error| match error {
            ExportMismatch::Size { covered, signed } => tampered(
                line,
                format!("the lines cover seqs up to {covered}, the checkpoint signs {signed}: lines at the end were removed"),
            ),
            ExportMismatch::Root => tampered(
                line,
                "the events and hashes of the file do not rebuild the signed root: a hash in the header or a chunk line was changed",
            ),
            other => tampered(line, other.to_string()),
        })?;
        let filter = header
            .filter
            .as_ref()
            .filter(|f| **f != EventFilter::default())
            .map(|f| {
                let mut out = Vec::new();
                self.json.write_filter(&mut out, f).map_or_else(
                    |_| format!("{f:?}"),
                    |()| String::from_utf8_lossy(&out).into_owned(),
                )
            });
        Ok(ExportSummary {
            tenant: header.tenant_id.clone(),
            origin: signed.origin.clone(),
            filter,
            after_seq: header.after_seq,
            tree_size: signed.size,
            root: signed.root,
            whole: self.whole,
            erased: self.erased,
            skipped: self.skipped,
            signed_at_micros: signed.time_micros,
        })
    }
}

/// A 32-byte hash from a message field, or tampering at `line`.
fn hash(bytes: &[u8], line: u64, what: &str) -> Result<Hash, Stop> {
    bytes
        .try_into()
        .or_else(|_| tampered(line, format!("{what} of {} bytes, not 32", bytes.len())))
}

/// Leaves under a subtree of `level` (saturating: no log is that large).
fn width(level: u32) -> u64 {
    1u64.checked_shl(level).unwrap_or(u64::MAX)
}

/// The first seq under subtree `index` of `level` (saturating).
fn first_seq(level: u32, index: u64) -> u64 {
    index.saturating_mul(width(level)).saturating_add(1)
}

/// Any JSON value in which no object has a key twice.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<UniqueKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("the key {key:?} appears twice")));
            }
        }
        Ok(UniqueKeys)
    }
}
