//! Checks an export against the signed checkpoint it ends with, offline.
//!
//! An export of a tenant's log from `after_seq` to the checkpoint's tree
//! size `N` carries, in seq order, everything needed to rebuild the tree's
//! root: the hashes of the perfect subtrees covering seqs `1..=after_seq`
//! (the prefix, as [`merkle::frontier`] lists them), each exported event
//! (whose leaf is recomputed from its canonical bytes), and, for every run
//! of seqs not exported with content (filtered out, or erased), the hashes
//! of the aligned perfect subtrees covering that run. Rebuilding the tree
//! from them and comparing its root with the checkpoint's proves every
//! exported event is in the signed log at its seq, unchanged.

use super::Checkpoint;
use super::merkle::{CompactTree, Hash};

/// Why an export does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportMismatch {
    /// The prefix does not have one hash per perfect subtree of `after_seq`.
    #[error("the prefix of {after_seq} events needs {expected} subtree hashes, the export has {found}")]
    Prefix {
        /// Where the export starts.
        after_seq: u64,
        /// Hashes needed.
        expected: usize,
        /// Hashes present.
        found: usize,
    },
    /// Something that covers `found` came where seq `expected` was due: a
    /// line removed, repeated or moved.
    #[error("seq {expected} was due next, found seq {found}")]
    OutOfPlace {
        /// The next seq the tree needed.
        expected: u64,
        /// The first seq of what came instead.
        found: u64,
    },
    /// The export ends before or after the checkpoint's tree.
    #[error("the export covers seqs up to {covered}, the checkpoint {signed}")]
    Size {
        /// Seqs covered by the export.
        covered: u64,
        /// The checkpoint's tree size.
        signed: u64,
    },
    /// Everything is in place, yet the tree's root is not the signed one:
    /// some content was changed together with what would have shown it.
    #[error("the exported events do not produce the checkpoint's root hash")]
    Root,
}

/// Rebuilds a tree from an export, piece by piece, in seq order.
#[derive(Debug, Clone)]
pub struct ExportVerifier {
    tree: CompactTree,
}

impl ExportVerifier {
    /// Starts after `after_seq` events whose perfect subtrees hash to
    /// `prefix`, largest first.
    pub fn new(after_seq: u64, prefix: Vec<Hash>) -> Result<Self, ExportMismatch> {
        let expected = usize::try_from(after_seq.count_ones()).unwrap_or(usize::MAX);
        if prefix.len() != expected {
            return Err(ExportMismatch::Prefix {
                after_seq,
                expected,
                found: prefix.len(),
            });
        }
        Ok(Self {
            tree: CompactTree::from_frontier(after_seq, prefix),
        })
    }

    /// The seq the next piece must start at.
    pub fn next_seq(&self) -> u64 {
        self.tree.size() + 1
    }

    /// Adds the event at `seq` by its leaf hash.
    pub fn event(&mut self, seq: u64, leaf: Hash) -> Result<(), ExportMismatch> {
        self.expect(seq)?;
        self.tree.push(leaf);
        Ok(())
    }

    /// Adds the perfect subtree `index` of `level` (seqs
    /// `index * 2^level + 1 ..= (index + 1) * 2^level`) by its hash.
    pub fn subtree(&mut self, level: u32, index: u64, hash: Hash) -> Result<(), ExportMismatch> {
        let first = 1u64
            .checked_shl(level)
            .and_then(|width| index.checked_mul(width))
            .and_then(|start| start.checked_add(1))
            .unwrap_or(u64::MAX);
        self.expect(first)?;
        self.tree
            .push_subtree(level, hash)
            .ok_or(ExportMismatch::OutOfPlace {
                expected: self.next_seq(),
                found: first,
            })
    }

    /// Checks the rebuilt tree against `checkpoint` (whose signature the
    /// caller has checked).
    pub fn finish(&self, checkpoint: &Checkpoint) -> Result<(), ExportMismatch> {
        if self.tree.size() != checkpoint.size {
            return Err(ExportMismatch::Size {
                covered: self.tree.size(),
                signed: checkpoint.size,
            });
        }
        if self.tree.root() != checkpoint.root {
            return Err(ExportMismatch::Root);
        }
        Ok(())
    }

    fn expect(&self, seq: u64) -> Result<(), ExportMismatch> {
        if seq == self.next_seq() {
            Ok(())
        } else {
            Err(ExportMismatch::OutOfPlace {
                expected: self.next_seq(),
                found: seq,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::merkle::{LeafRange, NodeId, leaf_hash};
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn root(leaves: &[Hash]) -> Hash {
        let mut tree = CompactTree::new();
        leaves.iter().for_each(|l| {
            tree.push(*l);
        });
        tree.root()
    }

    /// Hash of a perfect subtree, from the leaves.
    fn node(all: &[Hash], id: NodeId) -> Hash {
        let start = usize::try_from(id.index << id.level).unwrap();
        root(&all[start..start + (1 << id.level)])
    }

    fn checkpoint(all: &[Hash]) -> Checkpoint {
        Checkpoint {
            origin: "o/t".into(),
            size: all.len() as u64,
            root: root(all),
            time_micros: 0,
        }
    }

    /// Exports seqs after `after` of which those in `shown` carry content.
    fn export(all: &[Hash], after: u64, shown: &[u64]) -> Result<(), ExportMismatch> {
        let prefix: Vec<Hash> = LeafRange { start: 0, end: after }
            .subtrees()
            .into_iter()
            .map(|id| node(all, id))
            .collect();
        let mut verifier = ExportVerifier::new(after, prefix)?;
        let size = all.len() as u64;
        let mut seq = after + 1;
        while seq <= size {
            if shown.contains(&seq) {
                verifier.event(seq, all[usize::try_from(seq - 1).unwrap()])?;
                seq += 1;
                continue;
            }
            let end = (seq..=size).find(|s| shown.contains(s)).unwrap_or(size + 1);
            for id in (LeafRange {
                start: seq - 1,
                end: end - 1,
            })
            .aligned_subtrees()
            {
                verifier.subtree(id.level, id.index, node(all, id))?;
            }
            seq = end;
        }
        verifier.finish(&checkpoint(all))
    }

    #[test]
    fn every_export_of_every_range_and_selection_checks_out() {
        let all = leaves(19);
        for after in 0..19 {
            let every: Vec<u64> = (after + 1..=19).collect();
            assert_eq!(export(&all, after, &every), Ok(()), "all after {after}");
            let odd: Vec<u64> = every.iter().copied().filter(|s| s % 2 == 1).collect();
            assert_eq!(export(&all, after, &odd), Ok(()), "odd after {after}");
            assert_eq!(export(&all, after, &[]), Ok(()), "none after {after}");
        }
    }

    #[test]
    fn a_changed_leaf_a_missing_piece_or_a_wrong_order_is_caught() {
        let all = leaves(12);
        let mut changed = all.clone();
        changed[4] = leaf_hash(b"edited");
        let mut verifier = ExportVerifier::new(0, Vec::new()).unwrap();
        for (i, leaf) in changed.iter().enumerate() {
            verifier.event(i as u64 + 1, *leaf).unwrap();
        }
        assert_eq!(verifier.finish(&checkpoint(&all)), Err(ExportMismatch::Root));

        let mut verifier = ExportVerifier::new(0, Vec::new()).unwrap();
        verifier.event(1, all[0]).unwrap();
        assert_eq!(
            verifier.event(3, all[2]),
            Err(ExportMismatch::OutOfPlace {
                expected: 2,
                found: 3
            })
        );
        let mut short = ExportVerifier::new(0, Vec::new()).unwrap();
        short.event(1, all[0]).unwrap();
        assert_eq!(
            short.finish(&checkpoint(&all)),
            Err(ExportMismatch::Size {
                covered: 1,
                signed: 12
            })
        );
        assert!(matches!(
            ExportVerifier::new(3, vec![all[0]]),
            Err(ExportMismatch::Prefix { expected: 2, .. })
        ));
    }
}
