//! The decision-tree builder: sorts the boxes into [`MAX_TREES`] groups (boxes with a narrow
//! source, boxes with a wide one: mixing them in one tree copies every wide-source box into
//! every source cut, EffiCuts' observation), then for each group recursively cuts the
//! classification space in two at one field value (HyperSplit style) until every region holds
//! few enough boxes to check one by one, and lays the trees out as flat [`Node`] and
//! [`LeafEntry`] arrays (tree `t`'s root at node `t`). It owns the grouping, the split heuristic,
//! the pruning of boxes a region makes unreachable, and every size and depth limit; it must never
//! return a structure that breaks a limit (it returns an error instead).

use std::collections::HashMap;

use super::boxes::{Boxes, words};
use super::records::{
    FIELD_FAMILY, FIELD_SRC, FIELDS, LeafEntry, MAX_LEAF_ENTRIES, MAX_TREES, NODE_LEAF, Node,
};
use super::{CompileError, Limits};

/// Above this many boxes a region is not scanned for boxes shadowed by an earlier one (the scan
/// is quadratic).
const SHADOW_SCAN_MAX: usize = 4 * MAX_LEAF_ENTRIES;
/// The leaf size tried first: a smaller leaf costs fewer steps (and more nodes).
const PREFERRED_LEAF: usize = 8;
/// Candidate thresholds tried per field, as quantiles (in eighths) of the box edges inside the
/// region.
const QUANTILES: [usize; 3] = [2, 4, 6];

/// A region of the space: an inclusive range per field.
#[derive(Clone, Copy, Debug)]
struct Region {
    lo: [u128; FIELDS],
    hi: [u128; FIELDS],
}

/// What the builder produced, with the deepest walk it can take.
#[derive(Debug, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub entries: Vec<LeafEntry>,
    /// Per tree: most node records a walk reads (leaf included).
    pub max_depth: [usize; MAX_TREES],
    /// Per tree: most entries of one leaf.
    pub max_leaf: [usize; MAX_TREES],
}

struct Builder<'a> {
    boxes: &'a Boxes,
    limits: &'a Limits,
    tree: Tree,
    /// Leaves already laid out, by their box list: identical leaves are shared.
    leaves: HashMap<Vec<u32>, u32>,
    /// Scratch for split candidates.
    candidates: Vec<u128>,
    /// The tree being built.
    tree_index: usize,
    /// Most entries per leaf in the current attempt.
    leaf_size: usize,
}

/// Builds the tree of `boxes` within `limits`.
pub fn build(boxes: &Boxes, limits: &Limits) -> Result<Tree, CompileError> {
    let mut builder = Builder {
        boxes,
        limits,
        tree: Tree::default(),
        leaves: HashMap::new(),
        candidates: Vec::new(),
        tree_index: 0,
        leaf_size: limits.max_leaf,
    };
    let count = u32::try_from(boxes.len()).map_err(|_| CompileError::TooManyBoxes {
        max: super::boxes::MAX_BOXES,
    })?;
    let mut full = Region {
        lo: [0; FIELDS],
        hi: [0; FIELDS],
    };
    for (f, hi) in full.hi.iter_mut().enumerate() {
        *hi = field_max(f);
    }
    // Reserve the roots, so that tree `t` starts at node `t`.
    for _ in 0..MAX_TREES {
        builder.push_node(Node::default())?;
    }
    let mut groups: [Vec<u32>; MAX_TREES] = Default::default();
    for i in 0..count {
        groups[usize::from(wide_source(boxes, i as usize))].push(i);
    }
    for (t, ids) in groups.into_iter().enumerate() {
        builder.tree_index = t;
        builder.tree_with_fallback(ids, &full)?;
    }
    let steps: usize = (0..MAX_TREES)
        .map(|t| builder.tree.max_depth[t] + builder.tree.max_leaf[t])
        .sum();
    if steps > limits.max_steps {
        return Err(CompileError::TooManySteps {
            steps,
            max: limits.max_steps,
        });
    }
    Ok(builder.tree)
}

/// Whether a box's source covers at least 1/256 of its family's addresses (IPv4: /7 or
/// shorter; any source counts as wide).
fn wide_source(boxes: &Boxes, i: usize) -> bool {
    let span = boxes.hi[FIELD_SRC as usize][i] - boxes.lo[FIELD_SRC as usize][i];
    let v4_only = boxes.hi[FIELD_FAMILY as usize][i] == 0;
    let bits = if v4_only { 32 } else { 128 };
    span >= (1u128 << (bits - 8)) - 1
}

/// The largest value of a field.
fn field_max(field: usize) -> u128 {
    match field as u32 {
        super::records::FIELD_FAMILY | super::records::FIELD_SIDE => 1,
        super::records::FIELD_PROTO => 255,
        super::records::FIELD_SRC | super::records::FIELD_DST => u128::MAX,
        _ => u128::from(u16::MAX),
    }
}

impl Builder<'_> {
    /// Builds the current tree with small leaves (fewer steps per leaf, more nodes), and again
    /// with the largest leaves allowed if a region cannot be cut finely enough within the depth.
    fn tree_with_fallback(&mut self, ids: Vec<u32>, full: &Region) -> Result<(), CompileError> {
        let t = self.tree_index;
        let (nodes, entries) = (self.tree.nodes.len(), self.tree.entries.len());
        let mut leaf_sizes = vec![PREFERRED_LEAF.min(self.limits.max_leaf)];
        if self.limits.max_leaf > PREFERRED_LEAF {
            leaf_sizes.push(self.limits.max_leaf);
        }
        let mut result = Ok(0);
        for leaf in leaf_sizes {
            self.leaf_size = leaf;
            self.tree.max_depth[t] = 0;
            self.tree.max_leaf[t] = 0;
            result = self.region(ids.clone(), full, 1, Some(t as u32));
            match result {
                Err(CompileError::TooDeep { .. }) => {
                    // Forget what the failed attempt laid out.
                    self.tree.nodes.truncate(nodes);
                    self.tree.entries.truncate(entries);
                    self.leaves.retain(|_, &mut index| (index as usize) < nodes);
                }
                _ => break,
            }
        }
        result.map(|_| ())
    }

    /// Lays out the subtree for `region`, whose candidate boxes are `ids` (in rule order, each
    /// intersecting the region); `depth` counts the node records a walk has read on reaching it.
    /// A root is laid out `at` its reserved node.
    fn region(
        &mut self,
        mut ids: Vec<u32>,
        region: &Region,
        depth: usize,
        at: Option<u32>,
    ) -> Result<u32, CompileError> {
        self.prune_covered(&mut ids, region);
        if ids.len() > 1 && ids.len() <= SHADOW_SCAN_MAX {
            self.prune_shadowed(&mut ids, region);
        }
        if ids.len() <= self.leaf_size {
            return self.leaf(ids, depth, at);
        }
        if depth >= self.limits.max_node_steps {
            return Err(CompileError::TooDeep {
                max_node_steps: self.limits.max_node_steps,
                max_leaf: self.leaf_size,
                rules: self.rules_of(&ids),
            });
        }
        let Some((field, threshold)) = self.choose_split(&ids, region) else {
            return Err(CompileError::Internal(
                "no split for a region with several boxes",
            ));
        };
        let index = match at {
            Some(index) => index,
            None => self.push_node(Node::default())?,
        };
        let (lo, hi) = (&self.boxes.lo[field], &self.boxes.hi[field]);
        let left_ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| lo[i as usize] < threshold)
            .collect();
        let right_ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| hi[i as usize] >= threshold)
            .collect();
        drop(ids);
        let mut left_region = *region;
        left_region.hi[field] = threshold - 1;
        let mut right_region = *region;
        right_region.lo[field] = threshold;
        let left = self.region(left_ids, &left_region, depth + 1, None)?;
        let right = self.region(right_ids, &right_region, depth + 1, None)?;
        self.tree.nodes[index as usize] = Node {
            threshold: words(threshold),
            field: field as u32,
            left,
            right,
            _pad: 0,
        };
        Ok(index)
    }

    /// Drops every box after the first one that covers the whole region (first match wins, so
    /// they can never be reached here).
    fn prune_covered(&self, ids: &mut Vec<u32>, region: &Region) {
        let covers = |i: u32| {
            (0..FIELDS).all(|f| {
                self.boxes.lo[f][i as usize] <= region.lo[f]
                    && self.boxes.hi[f][i as usize] >= region.hi[f]
            })
        };
        if let Some(pos) = ids.iter().position(|&i| covers(i)) {
            ids.truncate(pos + 1);
        }
    }

    /// Drops every box whose part inside the region lies within one earlier box.
    fn prune_shadowed(&self, ids: &mut Vec<u32>, region: &Region) {
        let b = self.boxes;
        let mut kept: Vec<u32> = Vec::with_capacity(ids.len());
        for &j in ids.iter() {
            let j_ = j as usize;
            let shadowed = kept.iter().any(|&i| {
                let i = i as usize;
                (0..FIELDS).all(|f| {
                    b.lo[f][i] <= b.lo[f][j_].max(region.lo[f])
                        && b.hi[f][i] >= b.hi[f][j_].min(region.hi[f])
                })
            });
            if !shadowed {
                kept.push(j);
            }
        }
        *ids = kept;
    }

    /// The field and threshold that best split the boxes: the smallest larger side, then the
    /// fewest boxes copied to both sides. Candidates are quantiles of the box edges strictly
    /// inside the region, so each side is a non-empty part of it.
    fn choose_split(&mut self, ids: &[u32], region: &Region) -> Option<(usize, u128)> {
        let mut best: Option<((usize, usize), usize, u128)> = None;
        for field in 0..FIELDS {
            if region.lo[field] == region.hi[field] {
                continue;
            }
            let (lo, hi) = (&self.boxes.lo[field], &self.boxes.hi[field]);
            self.candidates.clear();
            for &i in ids {
                let (l, h) = (lo[i as usize], hi[i as usize]);
                if l > region.lo[field] {
                    self.candidates.push(l);
                }
                if h < region.hi[field] {
                    self.candidates.push(h + 1);
                }
            }
            let n = self.candidates.len();
            if n == 0 {
                continue;
            }
            let mut tried = [None; QUANTILES.len()];
            for (q, slot) in QUANTILES.iter().zip(tried.iter_mut()) {
                let (_, &mut t, _) = self.candidates.select_nth_unstable((n * q / 8).min(n - 1));
                *slot = Some(t);
            }
            for (k, t) in tried.iter().enumerate() {
                let Some(t) = *t else { continue };
                if tried[..k].contains(&Some(t)) {
                    continue;
                }
                let (mut left, mut right) = (0usize, 0usize);
                for &i in ids {
                    left += usize::from(lo[i as usize] < t);
                    right += usize::from(hi[i as usize] >= t);
                }
                let cost = (left.max(right), left + right);
                if best.is_none_or(|(c, _, _)| cost < c) {
                    best = Some((cost, field, t));
                }
            }
        }
        best.map(|(_, field, t)| (field, t))
    }

    /// Lays out a leaf for `ids` (`at` a root, or reusing an identical leaf).
    fn leaf(&mut self, ids: Vec<u32>, depth: usize, at: Option<u32>) -> Result<u32, CompileError> {
        let t = self.tree_index;
        self.tree.max_depth[t] = self.tree.max_depth[t].max(depth);
        self.tree.max_leaf[t] = self.tree.max_leaf[t].max(ids.len());
        if at.is_none()
            && let Some(&index) = self.leaves.get(&ids)
        {
            return Ok(index);
        }
        let first = self.tree.entries.len();
        if first + ids.len() > self.limits.max_entries {
            return Err(CompileError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        self.tree
            .entries
            .extend(ids.iter().map(|&i| self.boxes.entries[i as usize]));
        let node = Node {
            threshold: [0, 0],
            field: NODE_LEAF,
            left: first as u32,
            right: ids.len() as u32,
            _pad: 0,
        };
        match at {
            Some(index) => {
                self.tree.nodes[index as usize] = node;
                Ok(index)
            }
            None => {
                let index = self.push_node(node)?;
                self.leaves.insert(ids, index);
                Ok(index)
            }
        }
    }

    fn push_node(&mut self, node: Node) -> Result<u32, CompileError> {
        let index = self.tree.nodes.len();
        if index >= self.limits.max_nodes {
            return Err(CompileError::TooManyNodes {
                max: self.limits.max_nodes,
            });
        }
        self.tree.nodes.push(node);
        Ok(index as u32)
    }

    /// The distinct rules of some boxes (for error messages), at most 8.
    fn rules_of(&self, ids: &[u32]) -> Vec<u32> {
        let mut rules: Vec<u32> = ids
            .iter()
            .map(|&i| self.boxes.entries[i as usize].rule)
            .collect();
        rules.dedup();
        rules.truncate(8);
        rules
    }
}
