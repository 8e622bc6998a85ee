//! Streaming schedule. Batch packing keeps one ciphertext per neuron, so a layer computed
//! whole can need more memory than a machine has (HCNN's CIFAR-10 network has 32,768
//! neurons after its first convolution: 56 GiB at N = 2^14). A *chain* is a computing layer
//! (the head: a weighted-sum or an additive layer) together with the element-wise
//! activations, additive pools and reshapes that follow it; the runtime evaluates a chain a
//! chunk of its final neurons at a time, so the head's outputs never exist all at once, and
//! drops each input neuron as soon as the last chunk that reads it is done. Chunks are
//! ordered by the highest input neuron they read, which for `C×H×W` activations sweeps the
//! image top to bottom: inputs are freed while outputs are produced.

use crate::{Model, linear::Row};

/// Default number of head neurons computed per chunk (a chunk ends at the first final neuron
/// that reaches it, so it may hold a few more) (see [`super::BatchPlan::with_chunk_rows`]).
pub const CHUNK_ROWS: usize = 512;

/// A layer whose rows all sum the same number of inputs with one common weight and one
/// common bias (average pooling without padding, global average pooling, a uniform
/// scaling): it runs as ciphertext additions and folds its weight and bias into the pending
/// affine map, so it consumes no level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Uniform {
    /// The common weight.
    pub weight: f64,
    /// Terms per row.
    pub count: usize,
    /// The common bias.
    pub bias: f64,
}

/// The uniform description of `rows`, if they are uniform.
pub(crate) fn uniform(rows: &[Row]) -> Option<Uniform> {
    let first = rows.first()?;
    let &(_, weight) = first.terms.first()?;
    let u = Uniform {
        weight,
        count: first.terms.len(),
        bias: first.bias,
    };
    let same = rows.iter().all(|r| {
        r.bias == u.bias && r.terms.len() == u.count && r.terms.iter().all(|&(_, w)| w == weight)
    });
    (same && weight != 0.0).then_some(u)
}

/// A chain and its chunk schedule.
#[derive(Clone, Debug)]
pub(crate) struct Chain {
    /// The head and its followers, in evaluation order.
    pub nodes: Vec<usize>,
    /// The final neurons of each chunk (sorted).
    pub chunks: Vec<Vec<usize>>,
    /// Head neurons each chunk computes.
    pub head_rows: Vec<usize>,
    /// Input neurons dropped after each chunk, when the chain is its input's last use.
    pub frees: Option<Vec<Vec<usize>>>,
}

impl Chain {
    /// Plans the chain starting at `head`. `shapes[k]` and `rows[k]` are node `k`'s shape
    /// and rows (linear and additive nodes), `follows(k)` tells whether node `k` may extend
    /// a chain (element-wise, additive or reshape), `consumers[k]` lists node `k`'s readers,
    /// and `input_dies` whether the chain is the last reader of its input.
    #[expect(
        clippy::too_many_arguments,
        reason = "plan-time facts the planner already holds; a struct would only rename them"
    )]
    pub(crate) fn plan(
        model: &Model,
        shapes: &[Vec<usize>],
        head: usize,
        rows: &[Option<Vec<Row>>],
        follows: impl Fn(usize) -> bool,
        consumers: &[Vec<usize>],
        input_dies: bool,
        chunk_rows: usize,
    ) -> Self {
        let mut nodes = vec![head];
        let mut k = head;
        while k != model.output {
            match consumers[k].as_slice() {
                [c] if follows(*c) => {
                    nodes.push(*c);
                    k = *c;
                }
                _ => break,
            }
        }
        let finals = shapes[k].iter().product::<usize>();
        let heads = shapes[head].iter().product::<usize>();
        // Every final neuron's input neurons and head neurons, through the chain.
        let (deps, head_deps): (Vec<Vec<usize>>, Vec<Vec<usize>>) = (0..finals)
            .map(|f| {
                let mut sets = needed_sets(&nodes, rows, vec![f]).into_iter();
                let inputs = sets.next().unwrap_or_default();
                (inputs, sets.next().unwrap_or_default())
            })
            .unzip();
        let mut order: Vec<usize> = (0..finals).collect();
        order.sort_by_key(|&f| (deps[f].last().copied().unwrap_or(0), f));
        let mut chunks = Vec::new();
        let mut head_rows = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        // `mark[h] == chunks.len() + 1`: head neuron h is already counted in this chunk.
        let mut mark = vec![0usize; heads];
        let mut count = 0;
        for f in order {
            current.push(f);
            for &h in &head_deps[f] {
                if let Some(m) = mark.get_mut(h)
                    && *m != chunks.len() + 1
                {
                    *m = chunks.len() + 1;
                    count += 1;
                }
            }
            if count >= chunk_rows.max(1) {
                current.sort_unstable();
                chunks.push(std::mem::take(&mut current));
                head_rows.push(count);
                count = 0;
            }
        }
        if !current.is_empty() {
            current.sort_unstable();
            chunks.push(current);
            head_rows.push(count);
        }
        let frees = input_dies.then(|| {
            // The value the head reads may be wider than its input node's shape (a fused
            // layer passes its own input through): size by the neurons actually read.
            let inputs = deps.iter().flatten().max().map_or(0, |&j| j + 1);
            let mut last_chunk = vec![0usize; inputs];
            for (c, chunk) in chunks.iter().enumerate() {
                for &f in chunk {
                    for &j in &deps[f] {
                        if let Some(l) = last_chunk.get_mut(j) {
                            *l = c;
                        }
                    }
                }
            }
            let mut frees = vec![Vec::new(); chunks.len()];
            for (j, &c) in last_chunk.iter().enumerate() {
                if let Some(f) = frees.get_mut(c) {
                    f.push(j);
                }
            }
            frees
        });
        Self {
            nodes,
            chunks,
            head_rows,
            frees,
        }
    }

    /// The last node of the chain (whose value the chain produces).
    pub(crate) fn last(&self) -> usize {
        self.nodes.last().copied().unwrap_or(0)
    }
}

/// The sorted neuron sets a chunk touches: element 0 indexes the chain's input, element
/// `k + 1` the value of `nodes[k]`.
pub(crate) fn needed_sets(
    nodes: &[usize],
    rows: &[Option<Vec<Row>>],
    finals: Vec<usize>,
) -> Vec<Vec<usize>> {
    let mut sets = vec![Vec::new(); nodes.len() + 1];
    let mut cur = finals;
    for (k, &id) in nodes.iter().enumerate().rev() {
        sets[k + 1] = cur.clone();
        cur = match &rows[id] {
            Some(r) => {
                let mut s: Vec<usize> = cur
                    .iter()
                    .filter_map(|&i| r.get(i))
                    .flat_map(|row| row.terms.iter().map(|&(j, _)| j))
                    .collect();
                s.sort_unstable();
                s.dedup();
                s
            }
            None => cur,
        };
    }
    sets[0] = cur;
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_rows_are_recognised() {
        let pool = vec![
            Row {
                terms: vec![(0, 0.25), (1, 0.25), (2, 0.25), (3, 0.25)],
                bias: 0.0,
            },
            Row {
                terms: vec![(4, 0.25), (5, 0.25), (6, 0.25), (7, 0.25)],
                bias: 0.0,
            },
        ];
        assert_eq!(
            uniform(&pool),
            Some(Uniform {
                weight: 0.25,
                count: 4,
                bias: 0.0
            })
        );
        let mut border = pool.clone();
        border[1].terms.pop();
        assert_eq!(
            uniform(&border),
            None,
            "a padded border row has fewer terms"
        );
        let mut weighted = pool.clone();
        weighted[0].terms[0].1 = 0.5;
        assert_eq!(uniform(&weighted), None);
        let mut biased = pool;
        biased[1].bias = 1.0;
        assert_eq!(uniform(&biased), None);
        assert_eq!(uniform(&[]), None);
    }

    #[test]
    fn needed_sets_follow_the_rows_back() {
        // node 0: rows over 4 inputs; node 1: element-wise; node 2: sums pairs.
        let rows = vec![
            Some(vec![
                Row {
                    terms: vec![(0, 1.0), (1, 2.0)],
                    bias: 0.0,
                },
                Row {
                    terms: vec![(1, 1.0)],
                    bias: 0.0,
                },
                Row {
                    terms: vec![(3, 1.0)],
                    bias: 0.0,
                },
                Row {
                    terms: vec![(2, 1.0), (3, 1.0)],
                    bias: 0.0,
                },
            ]),
            None,
            Some(vec![
                Row {
                    terms: vec![(0, 0.5), (1, 0.5)],
                    bias: 0.0,
                },
                Row {
                    terms: vec![(2, 0.5), (3, 0.5)],
                    bias: 0.0,
                },
            ]),
        ];
        let sets = needed_sets(&[0, 1, 2], &rows, vec![1]);
        assert_eq!(sets, vec![vec![2, 3], vec![2, 3], vec![2, 3], vec![1]]);
        let sets = needed_sets(&[0, 1, 2], &rows, vec![0]);
        assert_eq!(sets[0], vec![0, 1]);
        let sets = needed_sets(&[0, 1, 2], &rows, vec![0, 1]);
        assert_eq!((sets[0].clone(), sets[1].len()), (vec![0, 1, 2, 3], 4));
    }
}
