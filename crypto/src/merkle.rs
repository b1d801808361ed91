//! The Merkle tree over a block's attestation ids (PROTOCOL.md "Merkle
//! tree"): the shape of RFC 6962 / RFC 9162 with BLAKE3.
//!
//! `leaf = BLAKE3(0x00 || id)`, `node = BLAKE3(0x01 || left || right)`; a
//! tree of n > 1 leaves splits at the largest power of two below n; the
//! empty tree's root is `BLAKE3("")`. Inclusion proofs are RFC 9162 audit
//! paths (sibling hashes from leaf to root), checked with the RFC 9162
//! §2.1.3.2 algorithm. Owns nothing else: which ids go in a block, and in
//! what order, is the consensus crate's business.

use crate::Hash;

/// `BLAKE3(0x00 || id)`, the leaf hash of an attestation id. The prefix
/// byte keeps a leaf from ever being taken for an inner node.
pub fn leaf_hash(id: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(id);
    *h.finalize().as_bytes()
}

/// `BLAKE3(0x01 || left || right)`, an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The root of the tree over `ids` in order (`BLAKE3("")` when empty): the
/// `attestations_root` of a block header.
pub fn root(ids: &[Hash]) -> Hash {
    if ids.is_empty() {
        return *blake3::hash(b"").as_bytes();
    }
    let leaves: Vec<Hash> = ids.iter().map(leaf_hash).collect();
    subtree_root(&leaves)
}

/// The RFC 9162 audit path for `ids[index]`: the sibling hashes from the
/// leaf up to the root. Empty for a one-leaf tree, and also empty (which
/// [`verify`] then refuses for any tree over one leaf) when `index` is out
/// of range.
pub fn audit_path(ids: &[Hash], index: usize) -> Vec<Hash> {
    if index >= ids.len() {
        return Vec::new();
    }
    let leaves: Vec<Hash> = ids.iter().map(leaf_hash).collect();
    let mut path = Vec::new();
    let (mut lo, mut hi, mut m) = (0usize, leaves.len(), index);
    // Walk down from the root, remembering each sibling subtree's root;
    // the path lists them leaf first, so reverse at the end.
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            path.push(subtree_root(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            path.push(subtree_root(&leaves[lo..lo + k]));
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    path
}

/// Checks that `path` proves `id` is leaf `index` of a tree of `count`
/// leaves with root `root` (RFC 9162 §2.1.3.2). False for an index out of
/// range, a path of the wrong length, or any changed byte.
pub fn verify(id: &Hash, index: u64, count: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= count {
        return false;
    }
    let (mut fn_, mut sn) = (index, count - 1);
    let mut r = leaf_hash(id);
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Root of a non-empty run of leaf hashes.
fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => *blake3::hash(b"").as_bytes(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
            .collect()
    }

    #[test]
    fn split_points() {
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(8), 4);
        assert_eq!(split(9), 8);
    }

    #[test]
    fn small_trees_by_hand() {
        let d = ids(3);
        assert_eq!(root(&d[..1]), leaf_hash(&d[0]));
        let l: Vec<Hash> = d.iter().map(leaf_hash).collect();
        let ab = node_hash(&l[0], &l[1]);
        assert_eq!(root(&d[..2]), ab);
        assert_eq!(root(&d), node_hash(&ab, &l[2]));
        assert_eq!(audit_path(&d, 0), vec![l[1], l[2]]);
        assert_eq!(audit_path(&d, 2), vec![ab]);
    }

    #[test]
    fn every_path_verifies_and_wrong_ones_do_not() {
        for n in 1..40usize {
            let d = ids(n);
            let r = root(&d);
            let count = n as u64;
            for i in 0..n {
                let p = audit_path(&d, i);
                assert!(verify(&d[i], i as u64, count, &p, &r), "n={n} i={i}");
                // (A wrong `count` can still pass against this root when the
                // tree shapes agree along the path; the header binds count
                // and root together, so that is harmless.)
                assert!(!verify(&d[i], i as u64, count, &p, &root(&d[..n - 1])));
                assert!(!verify(&d[i], count, count, &p, &r));
                if n > 1 {
                    assert!(!verify(&d[i], ((i + 1) % n) as u64, count, &p, &r));
                    assert!(!verify(&d[i], i as u64, count, &p[..p.len() - 1], &r));
                }
                let mut longer = p.clone();
                longer.push([0u8; 32]);
                assert!(!verify(&d[i], i as u64, count, &longer, &r));
            }
        }
    }

    #[test]
    fn out_of_range_is_harmless() {
        assert!(audit_path(&ids(3), 3).is_empty());
        assert!(audit_path(&[], 0).is_empty());
        assert!(!verify(&[0u8; 32], 0, 0, &[], &root(&[])));
        assert!(!verify(&[0u8; 32], u64::MAX, u64::MAX, &[], &[0u8; 32]));
    }
}
