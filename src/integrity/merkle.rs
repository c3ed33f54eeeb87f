//! The Merkle tree of RFC 9162 (Certificate Transparency v2), section 2.1:
//! leaf hashes, interior hashes, and the inclusion and consistency proofs,
//! computed from the hashes of *perfect subtrees*.
//!
//! A perfect subtree is addressed by `(level, index)`: it covers leaves
//! `index * 2^level .. (index + 1) * 2^level`. Every range the RFC's
//! recursive definitions visit is a run of at most 64 perfect subtrees, so a
//! proof over a tree of `n` leaves needs `O(log² n)` stored hashes at most
//! (`O(log n)` distinct ones in practice) and never a rescan of the leaves.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Address of a perfect subtree: `level` 0 is a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves.
    pub level: u32,
    /// Position among the subtrees of this level.
    pub index: u64,
}

impl NodeId {
    /// The subtree of height `level` at position `index`.
    pub fn new(level: u32, index: u64) -> Self {
        Self { level, index }
    }
}

/// RFC 9162 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// RFC 9162 interior hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The hash of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// A range of leaves `start..end` as the RFC's recursion meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafRange {
    /// Index of the first leaf in the range.
    pub start: u64,
    /// Index one past the last leaf in the range.
    pub end: u64,
}

impl LeafRange {
    /// The perfect subtrees that make up the range, left to right: the
    /// binary decomposition of its length, largest first. The ranges that
    /// RFC 9162 proofs use always start at a multiple of a power of two at
    /// least as large as their length, so each piece is aligned.
    pub fn subtrees(self) -> Vec<NodeId> {
        let mut pieces = Vec::new();
        let mut offset = self.start;
        let len = self.end - self.start;
        for level in (0..64u32).rev() {
            if len & (1 << level) != 0 {
                debug_assert_eq!(offset % (1 << level), 0, "unaligned range {self:?}");
                pieces.push(NodeId::new(level, offset >> level));
                offset += 1 << level;
            }
        }
        pieces
    }

    /// Any range as the fewest aligned perfect subtrees, left to right:
    /// from each position the largest subtree that starts there and fits.
    /// Pushed in order onto a [`CompactTree`] of `start` leaves
    /// ([`CompactTree::push_subtree`]), they add the range's leaves.
    pub fn aligned_subtrees(self) -> Vec<NodeId> {
        let mut pieces = Vec::new();
        let mut at = self.start;
        while at < self.end {
            let aligned = if at == 0 { 63 } else { at.trailing_zeros() };
            let fits = 63 - (self.end - at).leading_zeros();
            let level = aligned.min(fits);
            pieces.push(NodeId::new(level, at >> level));
            at += 1 << level;
        }
        pieces
    }

    /// `MTH(D[start:end])` from the hashes of [`subtrees`](Self::subtrees),
    /// given in the same order: the rightmost pieces are combined first.
    pub fn hash_of(pieces: &[Hash]) -> Hash {
        let mut iter = pieces.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// The ranges whose hashes form the inclusion proof of leaf `index` in the
/// tree of `size` leaves (RFC 9162 2.1.3.1), in proof order (leaf upward).
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<LeafRange> {
    assert!(index < size, "leaf {index} outside a tree of {size}");
    let mut path = Vec::new();
    let (mut start, mut end) = (0, size);
    while end - start > 1 {
        let k = split_point(end - start);
        if index - start < k {
            path.push(LeafRange {
                start: start + k,
                end,
            });
            end = start + k;
        } else {
            path.push(LeafRange {
                start,
                end: start + k,
            });
            start += k;
        }
    }
    path.reverse();
    path
}

/// The ranges whose hashes form the consistency proof between the trees of
/// `old` and `new` leaves (RFC 9162 2.1.4.1), in proof order. Empty when
/// `old` is 0 or equals `new`.
pub fn consistency_ranges(old: u64, new: u64) -> Vec<LeafRange> {
    assert!(old <= new, "tree of {old} cannot be a prefix of a tree of {new}");
    let mut proof = Vec::new();
    if old == 0 || old == new {
        return proof;
    }
    // SUBPROOF(m, D[start:end], b), unrolled.
    let (mut m, mut start, mut end, mut whole) = (old, 0, new, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(LeafRange { start, end });
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(LeafRange {
                start: start + k,
                end,
            });
            end = start + k;
        } else {
            proof.push(LeafRange {
                start,
                end: start + k,
            });
            m -= k;
            start += k;
            whole = false;
        }
    }
    proof.reverse();
    proof
}

/// Builds a tree leaf by leaf, keeping only the perfect subtrees along its
/// right edge (a "compact range"): the root of every prefix in `O(log n)`
/// memory, and every perfect subtree as it completes.
#[derive(Debug, Clone, Default)]
pub struct CompactTree {
    size: u64,
    /// Hashes of the perfect subtrees of the decomposition of `size`,
    /// largest (leftmost) first.
    edge: Vec<Hash>,
}

impl CompactTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes a tree of `size` leaves from the hashes of its perfect
    /// subtrees, largest first (as [`frontier`] lists them).
    pub fn from_frontier(size: u64, edge: Vec<Hash>) -> Self {
        debug_assert_eq!(edge.len(), size.count_ones() as usize);
        Self { size, edge }
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds a leaf and returns every perfect subtree it completes, the leaf
    /// itself first.
    pub fn push(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let mut completed = vec![(NodeId::new(0, self.size), leaf)];
        let mut hash = leaf;
        let mut level = 0;
        // Each trailing one bit of the old size is a left sibling to merge.
        while self.size & (1 << level) != 0 {
            let left = self.edge.pop().expect("edge matches the size's bits");
            hash = node_hash(&left, &hash);
            level += 1;
            completed.push((NodeId::new(level, self.size >> level), hash));
        }
        self.edge.push(hash);
        self.size += 1;
        completed
    }

    /// Adds the `2^level` leaves of a perfect subtree given by its hash, as
    /// if they were pushed one by one; `None` (and nothing added) when the
    /// tree's size is not a multiple of `2^level`, so the subtree would not
    /// be one of the tree's own.
    pub fn push_subtree(&mut self, level: u32, hash: Hash) -> Option<()> {
        let width = 1u64.checked_shl(level)?;
        if !self.size.is_multiple_of(width) || self.size.checked_add(width).is_none() {
            return None;
        }
        let mut hash = hash;
        let mut bit = level;
        // The size's bits below `level` are zero: the edge's last entries
        // are the subtrees of its bits from `level` up.
        while bit < 64 && self.size & (1 << bit) != 0 {
            let left = self.edge.pop()?;
            hash = node_hash(&left, &hash);
            bit += 1;
        }
        self.edge.push(hash);
        self.size += width;
        Some(())
    }

    /// The root hash of the leaves so far.
    pub fn root(&self) -> Hash {
        LeafRange::hash_of(&self.edge)
    }
}

/// The perfect subtrees a tree of `size` leaves decomposes into, largest
/// first: what [`CompactTree::from_frontier`] needs to resume.
pub fn frontier(size: u64) -> Vec<NodeId> {
    LeafRange { start: 0, end: size }.subtrees()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushing_a_subtree_is_pushing_its_leaves() {
        let all = leaves(37);
        for start in 0..37u64 {
            for end in start..=37u64 {
                // Leaves before `start`, the range as its aligned subtrees
                // where the range allows, leaves after.
                let mut tree = CompactTree::new();
                for leaf in &all[..usize::try_from(start).unwrap()] {
                    tree.push(*leaf);
                }
                for id in (LeafRange { start, end }).aligned_subtrees() {
                    let from = usize::try_from(id.index << id.level).unwrap();
                    let to = from + (1 << id.level);
                    tree.push_subtree(id.level, reference_root(&all[from..to]))
                        .unwrap();
                }
                for leaf in &all[usize::try_from(end).unwrap()..] {
                    tree.push(*leaf);
                }
                assert_eq!(tree.size(), 37);
                assert_eq!(tree.root(), reference_root(&all), "{start}..{end}");
            }
        }
    }

    #[test]
    fn a_misaligned_subtree_is_refused() {
        let mut tree = CompactTree::new();
        tree.push(leaf_hash(b"a"));
        assert_eq!(tree.push_subtree(1, leaf_hash(b"b")), None);
        assert_eq!(tree.size(), 1);
        assert_eq!(tree.push_subtree(0, leaf_hash(b"b")), Some(()));
        assert_eq!(tree.push_subtree(1, leaf_hash(b"c")), Some(()));
        assert_eq!(tree.size(), 4);
    }

    /// Root by the RFC's recursive definition, over leaf hashes.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = usize::try_from(split_point(n as u64)).expect("below n");
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn compact_tree_root_matches_the_recursive_definition_for_every_size() {
        let all = leaves(70);
        let mut tree = CompactTree::new();
        assert_eq!(tree.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            tree.push(*leaf);
            assert_eq!(tree.root(), reference_root(&all[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn completed_subtrees_hash_their_leaves() {
        let all = leaves(33);
        let mut tree = CompactTree::new();
        for leaf in &all {
            for (node, hash) in tree.push(*leaf) {
                let start = usize::try_from(node.index << node.level).expect("within 33 leaves");
                let end = start + (1usize << node.level);
                assert_eq!(hash, reference_root(&all[start..end]), "{node:?}");
            }
        }
    }

    #[test]
    fn resuming_from_the_frontier_gives_the_same_tree() {
        let all = leaves(45);
        let mut nodes = std::collections::HashMap::new();
        let mut tree = CompactTree::new();
        for leaf in &all[..29] {
            nodes.extend(tree.push(*leaf));
        }
        let edge = frontier(29).iter().map(|id| nodes[id]).collect();
        let mut resumed = CompactTree::from_frontier(29, edge);
        for leaf in &all[29..] {
            resumed.push(*leaf);
        }
        assert_eq!(resumed.root(), reference_root(&all));
    }

    #[test]
    fn proofs_of_a_single_leaf_tree_are_empty() {
        assert!(inclusion_ranges(0, 1).is_empty());
        assert!(consistency_ranges(1, 1).is_empty());
        assert!(consistency_ranges(0, 5).is_empty());
    }

    #[test]
    fn proof_ranges_are_aligned_runs_of_perfect_subtrees() {
        for size in 1..80u64 {
            for index in 0..size {
                for range in inclusion_ranges(index, size) {
                    let covered: u64 = range.subtrees().iter().map(|n| 1u64 << n.level).sum();
                    assert_eq!(covered, range.end - range.start);
                }
            }
            for old in 1..=size {
                for range in consistency_ranges(old, size) {
                    assert!(!range.subtrees().is_empty());
                }
            }
        }
    }

    /// Certificate Transparency reference vectors, as published with the
    /// Go implementation of RFC 6962 / RFC 9162 proofs:
    /// github.com/transparency-dev/merkle, `proof/verify_test.go`
    /// (`leaves`, `roots`, `inclusionProofs`, `consistencyProofs`; the
    /// same data as certificate-transparency's `merkle_tree_test.cc`).
    /// Leaf numbers there are 1-based.
    mod reference_vectors {
        use super::*;

        const LEAVES: [&str; 8] = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        const ROOTS: [&str; 8] = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        const EMPTY_ROOT: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        /// (leaf, tree size, proof).
        const INCLUSION: [(u64, u64, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                3,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                2,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        /// (size 1, size 2, proof).
        const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];

        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }

        fn unhex(text: &str) -> Vec<u8> {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
                .collect()
        }

        fn reference_leaves() -> Vec<Hash> {
            LEAVES.iter().map(|data| leaf_hash(&unhex(data))).collect()
        }

        /// Every perfect subtree of the reference tree, as the store keeps them.
        fn stored_nodes() -> std::collections::HashMap<NodeId, Hash> {
            let mut tree = CompactTree::new();
            reference_leaves()
                .into_iter()
                .flat_map(|leaf| tree.push(leaf))
                .collect()
        }

        fn proof(ranges: Vec<LeafRange>) -> Vec<String> {
            let nodes = stored_nodes();
            ranges
                .into_iter()
                .map(|range| {
                    let pieces: Vec<Hash> = range.subtrees().iter().map(|id| nodes[id]).collect();
                    hex(&LeafRange::hash_of(&pieces))
                })
                .collect()
        }

        #[test]
        fn tree_heads_match() {
            assert_eq!(hex(&empty_root()), EMPTY_ROOT);
            let mut tree = CompactTree::new();
            for (leaf, root) in reference_leaves().into_iter().zip(ROOTS) {
                tree.push(leaf);
                assert_eq!(hex(&tree.root()), root, "size {}", tree.size());
            }
        }

        #[test]
        fn inclusion_proofs_match() {
            for (leaf, size, expected) in INCLUSION {
                assert_eq!(
                    proof(inclusion_ranges(leaf - 1, size)),
                    expected,
                    "leaf {leaf} of {size}"
                );
            }
        }

        #[test]
        fn consistency_proofs_match() {
            for (old, new, expected) in CONSISTENCY {
                assert_eq!(proof(consistency_ranges(old, new)), expected, "{old} -> {new}");
            }
        }
    }
}
