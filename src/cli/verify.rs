//! `audit-service verify`: recomputes a tenant's Merkle tree from the rows
//! in the database and checks it against every signed checkpoint (and a
//! checkpoint saved elsewhere), reporting the first bad `seq`.
//!
//! What it catches, and how:
//! - an edited, replaced or moved row: its recomputed leaf differs from the
//!   leaf stored when it was appended, and the root from the recomputed
//!   leaves differs from the signed one;
//! - a removed row: a gap in the seqs;
//! - a truncated log: fewer events than a signed checkpoint counts;
//! - a row erased without `Delete` or retention: no `audit.event.deleted`
//!   event names it and no `audit.retention.applied` event's seq range
//!   holds it, or more rows in those ranges were erased than the runs
//!   counted (a range also spans what retention kept: held events, the
//!   service's own records);
//! - rewritten leaves and tree nodes too: the recomputed roots differ from
//!   the signed checkpoints; the first bad seq then lies after the largest
//!   checkpoint that still matches.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::convert::seq_to_proto;
use crate::integrity::merkle::{CompactTree, Hash};
use crate::integrity::{VerifierKey, event_leaf};
use crate::store::{
    DELETION_ACTION, DELETION_RESOURCE_TYPE, LOG_RESOURCE_TYPE, LogRow, RETENTION_ACTION, Store,
};
use crate::tenant::TenantId;

/// Rows read per statement.
const PAGE: u64 = 1000;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The seq it concerns, when it concerns one.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Rows read.
    pub events: u64,
    /// Checkpoints whose root was compared, as (tree size, matched).
    pub checkpoints: Vec<(u64, bool)>,
    /// Everything wrong, in the order found.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first seq known to be bad: the lowest seq a problem names, or,
    /// when only roots differ, the first seq after the largest checkpoint
    /// that still matches.
    pub fn first_bad_seq(&self) -> Option<u64> {
        let named = self.problems.iter().filter_map(|p| p.seq).min();
        if named.is_some() || self.is_clean() {
            return named;
        }
        let first_mismatch = self
            .checkpoints
            .iter()
            .find(|(_, ok)| !ok)
            .map(|(size, _)| *size)?;
        let last_match = self
            .checkpoints
            .iter()
            .filter(|(size, ok)| *ok && *size < first_mismatch)
            .map(|(size, _)| *size)
            .max()
            .unwrap_or(0);
        Some(last_match + 1)
    }

    fn problem(&mut self, seq: Option<u64>, what: String) {
        self.problems.push(Problem { seq, what });
    }
}

/// A checkpoint to compare with: its root, and where it came from.
struct Expected {
    root: Hash,
    source: String,
}

/// Verifies the tenant's log in `store` against the checkpoints stored
/// there and `saved` (a checkpoint note kept outside the database), all
/// checked with `verifier`; `origin` is the log name they must carry.
pub async fn verify(
    store: &Store,
    tenant: &TenantId,
    origin: &str,
    verifier: &VerifierKey,
    saved: Option<&str>,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut expected: BTreeMap<u64, Vec<Expected>> = BTreeMap::new();
    for stored in store.checkpoints(tenant).await? {
        match verifier.open(&stored.note) {
            Ok(signed) if signed.checkpoint.origin != origin => report.problem(
                None,
                format!(
                    "stored checkpoint of {} events names log {:?}, not {origin:?}",
                    stored.tree_size, signed.checkpoint.origin
                ),
            ),
            Ok(signed) => expected
                .entry(signed.checkpoint.size)
                .or_default()
                .push(Expected {
                    root: signed.checkpoint.root,
                    source: format!(
                        "checkpoint signed at {}",
                        describe_time(signed.checkpoint.time_micros)
                    ),
                }),
            Err(error) => report.problem(
                None,
                format!("stored checkpoint of {} events: {error}", stored.tree_size),
            ),
        }
    }
    if let Some(note) = saved {
        let signed = verifier
            .open(note)
            .map_err(|e| anyhow::anyhow!("the saved checkpoint does not verify: {e}"))?;
        if signed.checkpoint.origin != origin {
            anyhow::bail!(
                "the saved checkpoint is of log {:?}, not {origin:?}",
                signed.checkpoint.origin
            );
        }
        expected
            .entry(signed.checkpoint.size)
            .or_default()
            .push(Expected {
                root: signed.checkpoint.root,
                source: "the saved checkpoint".to_owned(),
            });
    }
    let (head_seq, tree_size) = store.log_heads(tenant).await?;

    let mut tree = CompactTree::new();
    let mut deletions_recorded = HashSet::new();
    let mut retention_runs: Vec<RetentionRun> = Vec::new();
    let mut erased: Vec<(u64, String)> = Vec::new();
    let mut expected_seq: u64 = 1;
    let mut after = 0i64;
    check_roots(&tree, &expected, &mut report);
    loop {
        let rows = store.log_rows(tenant, after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq();
        let last_seq = seq_to_proto(after);
        // From the next expected seq, so leaves of missing rows are at hand.
        let stored_leaves: HashMap<u64, Vec<u8>> = store
            .stored_leaves(tenant, expected_seq - 1, last_seq + 1 - expected_seq)
            .await?
            .into_iter()
            .collect();
        for row in rows {
            let seq = seq_to_proto(row.seq());
            report.events += 1;
            while expected_seq < seq {
                report.problem(
                    Some(expected_seq),
                    "event missing from the log (row removed)".into(),
                );
                // Keep positions aligned so later rows are still checked.
                if let Some(leaf) = stored_leaf(&stored_leaves, expected_seq) {
                    tree.push(leaf);
                }
                expected_seq += 1;
                check_roots(&tree, &expected, &mut report);
            }
            let stored = stored_leaf(&stored_leaves, seq);
            let row = match row {
                LogRow::Event(row) => row,
                LogRow::Unreadable { why, .. } => {
                    report.problem(
                        Some(seq),
                        format!(
                            "the row cannot be read as an event, so it was written outside the service: {why}"
                        ),
                    );
                    // Keep positions aligned so later rows are still checked.
                    if let Some(leaf) = stored {
                        tree.push(leaf);
                    }
                    expected_seq = seq + 1;
                    check_roots(&tree, &expected, &mut report);
                    continue;
                }
            };
            let in_tree = seq <= seq_to_proto(tree_size);
            let leaf = if row.deleted_at.is_some() {
                erased.push((seq, row.id.to_string()));
                match stored {
                    Some(leaf) => leaf,
                    None if !in_tree => event_leaf(&row),
                    None => {
                        report.problem(Some(seq), "erased event has no stored leaf hash".into());
                        event_leaf(&row)
                    }
                }
            } else {
                let recomputed = event_leaf(&row);
                match stored {
                    Some(leaf) if leaf != recomputed => report.problem(
                        Some(seq),
                        "content does not match the leaf hash recorded when it was appended \
                         (edited, replaced or moved)"
                            .into(),
                    ),
                    None if in_tree => report.problem(Some(seq), "no stored leaf hash".into()),
                    _ => {}
                }
                if row.action.as_deref() == Some(DELETION_ACTION)
                    && row.resource_type.as_deref() == Some(DELETION_RESOURCE_TYPE)
                {
                    deletions_recorded.extend(row.resource_id.clone());
                }
                if row.action.as_deref() == Some(RETENTION_ACTION)
                    && row.resource_type.as_deref() == Some(LOG_RESOURCE_TYPE)
                {
                    retention_runs.extend(retention_range(row.metadata.as_ref()));
                }
                recomputed
            };
            tree.push(leaf);
            expected_seq = seq + 1;
            check_roots(&tree, &expected, &mut report);
        }
    }
    let rows_end = expected_seq - 1;
    let claimed = expected
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        .max(seq_to_proto(head_seq));
    if claimed > rows_end {
        report.problem(
            Some(rows_end + 1),
            format!("log truncated: {claimed} events were recorded, the log ends at seq {rows_end}"),
        );
    }
    let mut by_retention = 0u64;
    for (seq, id) in erased {
        if deletions_recorded.contains(&id) {
            continue;
        }
        if retention_runs.iter().any(|run| run.holds(seq)) {
            by_retention += 1;
        } else {
            report.problem(
                Some(seq),
                format!("event {id} was erased without an {DELETION_ACTION} or {RETENTION_ACTION} event"),
            );
        }
    }
    let counted: u64 = retention_runs.iter().map(|run| run.count).sum();
    if by_retention > counted {
        report.problem(
            None,
            format!(
                "{by_retention} events in the seq ranges of {RETENTION_ACTION} events were erased \
                 without an {DELETION_ACTION} event, but those runs erased {counted}"
            ),
        );
    }
    Ok(report)
}

/// What a retention run's record says it erased: how many events, all
/// within `first..=last`.
struct RetentionRun {
    first: u64,
    last: u64,
    count: u64,
}

impl RetentionRun {
    fn holds(&self, seq: u64) -> bool {
        (self.first..=self.last).contains(&seq)
    }
}

/// What a retention run's record says it erased.
fn retention_range(metadata: Option<&serde_json::Value>) -> Option<RetentionRun> {
    let number = |key: &str| metadata?.get(key)?.as_u64();
    Some(RetentionRun {
        first: number("first_seq")?,
        last: number("last_seq")?,
        count: number("count")?,
    })
}

fn stored_leaf(stored: &HashMap<u64, Vec<u8>>, seq: u64) -> Option<Hash> {
    stored
        .get(&(seq - 1))
        .and_then(|h| Hash::try_from(h.as_slice()).ok())
}

/// Compares the root of the tree so far with every checkpoint of its size.
fn check_roots(tree: &CompactTree, expected: &BTreeMap<u64, Vec<Expected>>, report: &mut Report) {
    let Some(checkpoints) = expected.get(&tree.size()) else {
        return;
    };
    let root = tree.root();
    for checkpoint in checkpoints {
        let matched = checkpoint.root == root;
        report.checkpoints.push((tree.size(), matched));
        if !matched {
            report.problem(
                None,
                format!(
                    "the first {} events do not hash to the root of {}",
                    tree.size(),
                    checkpoint.source
                ),
            );
        }
    }
}

fn describe_time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| micros.to_string())
}
