//! Level assignment: a pass over a plan, run without cryptography, that follows the level
//! and scale of every value through the plan's stages on the actual primes of a parameter
//! set and decides which values a refresh (bootstrapping) brings back up.
//!
//! **Where refreshes go.** A refresh runs on a *cut*: a value that holds everything the
//! later stages read (in a ResNet, the output of every block; inside a block the shortcut
//! is still live, and refreshing the main branch alone would leave the addition at the
//! shortcut's low level). Between two cuts the stages form a piece of graph whose levels
//! follow from its first value's. So placement is a shortest path over the cuts: from the
//! input (at `top`) or a refreshed cut (at the refresh's level) to every cut or the output
//! the stages can reach without running out of levels, weighted by
//! 1. the refreshes: how many ciphertexts are bootstrapped (fewest first), then
//! 2. the levels the stages run at, summed (lower levels are cheaper: fewer primes).
//!
//! Without a refresh ([`RefreshSpec`] `None`) a plan deeper than its parameters is refused
//! naming the stage that runs out.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::NnError;

/// What a refresh gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshSpec {
    /// The level a refreshed value has.
    pub level: usize,
}

/// What a stage does to levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// A linear stage: one rescale, its output at the nominal scale (its weights are encoded
    /// at the prime it drops times the ratio of the nominal scale to its input's).
    Linear,
    /// A square: the scale squared, one rescale.
    Square,
    /// No level consumed (an affine activation folded into the next stage).
    Keep,
}

/// One stage as the level pass sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The stage's name (its operators).
    pub name: String,
    /// What it does to levels.
    pub kind: StageKind,
    /// The values it reads: 0 is the plan's input, `k + 1` stage `k`'s output. A stage
    /// with several inputs (a residual addition) runs at the lowest of their levels; the
    /// others are brought down to it.
    pub inputs: Vec<usize>,
    /// Ciphertexts its output takes (what refreshing it costs).
    pub cts: usize,
}

/// Level and scale of one stage's output.
#[derive(Clone, Debug, PartialEq)]
pub struct StageLevels {
    /// The stage's name.
    pub name: String,
    /// Level of the stage's input.
    pub level_in: usize,
    /// Level of its output (before any refresh).
    pub level_out: usize,
    /// log2 of its output's scale (before any refresh).
    pub log_scale_out: f64,
    /// Whether its output is refreshed (then later stages read it at the refresh's level).
    pub refresh_after: bool,
    /// Ciphertexts of its output.
    pub cts: usize,
}

/// The levels of every stage, and which values are refreshed.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelPlan {
    /// The inputs' level.
    pub top: usize,
    /// The level refreshed values have (when the plan refreshes).
    pub refresh_level: Option<usize>,
    /// Every stage, in order.
    pub stages: Vec<StageLevels>,
}

impl LevelPlan {
    /// Indices of the stages whose output is refreshed (value `i + 1` for stage `i`).
    pub fn refreshes(&self) -> BTreeSet<usize> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.refresh_after)
            .map(|(i, _)| i)
            .collect()
    }

    /// Ciphertexts refreshed in one evaluation (bootstrappings).
    pub fn refreshed_cts(&self) -> usize {
        self.stages
            .iter()
            .filter(|s| s.refresh_after)
            .map(|s| s.cts)
            .sum()
    }

    /// The output's level.
    pub fn output_level(&self) -> usize {
        self.stages.last().map_or(self.top, |s| s.level_out)
    }

    /// One line per level-consuming stage, for reports.
    pub fn describe(&self) -> String {
        let mut out = format!("levels: inputs at {}", self.top);
        for s in &self.stages {
            if s.level_out != s.level_in {
                let _ = write!(
                    out,
                    " → {} {} (2^{:.1})",
                    s.name, s.level_out, s.log_scale_out
                );
            }
            if s.refresh_after {
                let _ = write!(
                    out,
                    " → refresh {} ct to {}",
                    s.cts,
                    self.refresh_level.unwrap_or(0)
                );
            }
        }
        let _ = write!(
            out,
            "; {} refresh(es) of {} ciphertext(s)",
            self.refreshes().len(),
            self.refreshed_cts()
        );
        out
    }
}

/// Assigns levels to `stages` for inputs at level `top` and scale `2^log_scale`, with the
/// primes `q` (`q[l]` dropped by a rescale at level `l`); when `refresh` says what a refresh
/// gives back, refreshes the values the module's shortest path chooses.
///
/// # Errors
/// [`NnError::OutOfLevels`] naming the stage that runs out of levels when there is no
/// refresh; [`NnError::RefreshPlacement`] when no placement of refreshes reaches the output.
pub fn assign(
    stages: &[Stage],
    q: &[f64],
    top: usize,
    log_scale: f64,
    refresh: Option<RefreshSpec>,
) -> Result<LevelPlan, NnError> {
    let refreshed = match refresh {
        None => BTreeSet::new(),
        Some(r) => place(stages, top, r)?,
    };
    let run = Forward {
        stages,
        q,
        log_scale,
        refresh_level: refresh.map_or(0, |r| r.level),
        refreshed: &refreshed,
    };
    let out = run.from(0, top).map_err(|index| NnError::OutOfLevels {
        stage: stages
            .get(index)
            .map_or_else(String::new, |s| s.name.clone()),
        depth: depth(stages),
        levels: top,
        index,
    })?;
    Ok(LevelPlan {
        top,
        refresh_level: refresh.map(|r| r.level),
        stages: out,
    })
}

/// One forward pass of levels and scales, with the refreshed values given.
struct Forward<'a> {
    stages: &'a [Stage],
    q: &'a [f64],
    log_scale: f64,
    refresh_level: usize,
    refreshed: &'a BTreeSet<usize>,
}

impl Forward<'_> {
    /// Levels of every stage from value `start` (at `level`, nominal scale) on; the index of
    /// the first stage that runs out of levels otherwise. Stages before `start` are skipped
    /// (from a cut, no later stage reads them).
    fn from(&self, start: usize, level: usize) -> Result<Vec<StageLevels>, usize> {
        let mut at: Vec<Option<(usize, f64)>> = vec![None; self.stages.len() + 1];
        at[start] = Some((level, self.log_scale));
        let mut out = Vec::with_capacity(self.stages.len().saturating_sub(start));
        for (i, stage) in self.stages.iter().enumerate().skip(start) {
            let (mut level, mut log_scale) = stage
                .inputs
                .iter()
                .filter_map(|&v| at.get(v).copied().flatten())
                .min_by_key(|&(l, _)| l)
                .ok_or(i)?;
            let level_in = level;
            match stage.kind {
                StageKind::Keep => {}
                _ if level == 0 => return Err(i),
                StageKind::Linear => {
                    // Its weights are encoded to bring the output back to the nominal scale.
                    level -= 1;
                    log_scale = self.log_scale;
                }
                StageKind::Square => {
                    let q_l = self.q.get(level).copied().unwrap_or(1.0).max(1.0);
                    log_scale = 2.0 * log_scale - q_l.log2();
                    level -= 1;
                }
            }
            let refresh_after = self.refreshed.contains(&i);
            at[i + 1] = Some(if refresh_after {
                (self.refresh_level, self.log_scale)
            } else {
                (level, log_scale)
            });
            out.push(StageLevels {
                name: stage.name.clone(),
                level_in,
                level_out: level,
                log_scale_out: log_scale,
                refresh_after,
                cts: stage.cts,
            });
        }
        Ok(out)
    }
}

/// Stages (by index) whose outputs are cuts: no later stage reads a value produced before
/// them. The last stage (the output) is left out: refreshing it gains nothing.
fn cuts(stages: &[Stage]) -> Vec<usize> {
    // The smallest value read by stage `j` or any later one.
    let mut suffix_min = vec![usize::MAX; stages.len() + 1];
    for j in (0..stages.len()).rev() {
        let m = stages[j].inputs.iter().copied().min().unwrap_or(usize::MAX);
        suffix_min[j] = suffix_min[j + 1].min(m);
    }
    (0..stages.len().saturating_sub(1))
        .filter(|&i| suffix_min[i + 1] > i)
        .collect()
}

/// A placement's cost: ciphertexts refreshed, then the levels stages run at, summed.
type Cost = (usize, usize);

/// The refreshed stages of the cheapest placement (see the module's documentation).
fn place(stages: &[Stage], top: usize, r: RefreshSpec) -> Result<BTreeSet<usize>, NnError> {
    let none = BTreeSet::new();
    let probe = Forward {
        stages,
        q: &[],
        log_scale: 0.0,
        refresh_level: r.level,
        refreshed: &none,
    };
    let cuts = cuts(stages);
    let last = stages.len().saturating_sub(1);
    // Nodes: the input (value 0), then every cut stage's output (value `i + 1`).
    let nodes: Vec<usize> = std::iter::once(0)
        .chain(cuts.iter().map(|&i| i + 1))
        .collect();
    // Cost to reach each node refreshed (the input: unrefreshed at `top`), and its parent.
    let mut best: Vec<Option<(Cost, Option<usize>)>> = vec![None; nodes.len()];
    best[0] = Some(((0, 0), None));
    let mut finish: Option<(Cost, usize)> = None;
    let mut furthest = 0;
    for (a, &from) in nodes.iter().enumerate() {
        let Some((cost, _)) = best[a] else { continue };
        let level = if a == 0 { top } else { r.level };
        let reached = match probe.from(from, level) {
            Ok(levels) => levels,
            Err(stop) => {
                furthest = furthest.max(stop);
                // The stages before `stop` ran: the cuts among them are reachable.
                probe_prefix(&probe, from, level, stop)
            }
        };
        // Levels the stages ran at, summed, up to each value.
        let mut run = 0usize;
        let mut sums = Vec::with_capacity(reached.len());
        for s in &reached {
            run += s.level_in * usize::from(s.level_in != s.level_out);
            sums.push(run);
        }
        for (k, s) in reached.iter().enumerate() {
            let stage = from + k;
            if stage == last {
                let c = (cost.0, cost.1 + sums[k]);
                if finish.is_none_or(|(f, _)| c < f) {
                    finish = Some((c, a));
                }
            } else if let Ok(b) = nodes.binary_search(&(stage + 1))
                && b > a
            {
                let c = (cost.0 + s.cts.max(1), cost.1 + sums[k]);
                if best[b].is_none_or(|(f, _)| c < f) {
                    best[b] = Some((c, Some(a)));
                }
            }
        }
    }
    let Some((_, mut a)) = finish else {
        return Err(NnError::RefreshPlacement {
            stage: stages
                .get(furthest)
                .map_or_else(String::new, |s| s.name.clone()),
            index: furthest,
            levels: r.level,
        });
    };
    let mut refreshed = BTreeSet::new();
    while a != 0 {
        refreshed.insert(nodes[a] - 1);
        a = best[a].and_then(|(_, p)| p).unwrap_or(0);
    }
    Ok(refreshed)
}

/// The stages from `from` up to (not including) `stop`, which ran out of levels.
fn probe_prefix(probe: &Forward<'_>, from: usize, level: usize, stop: usize) -> Vec<StageLevels> {
    let head = Forward {
        stages: &probe.stages[..stop],
        ..*probe
    };
    head.from(from, level).unwrap_or_default()
}

/// Levels `stages` consume without refreshes, along their longest path.
pub fn depth(stages: &[Stage]) -> usize {
    let mut d = vec![0usize];
    for s in stages {
        let from = s
            .inputs
            .iter()
            .map(|&v| d.get(v).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        d.push(from + usize::from(s.kind != StageKind::Keep));
    }
    d.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(kinds: &[StageKind]) -> Vec<Stage> {
        kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| Stage {
                name: format!("s{i}"),
                kind,
                inputs: vec![i],
                cts: 1,
            })
            .collect()
    }

    #[test]
    fn a_residual_stage_runs_at_its_lowest_input() {
        use StageKind::{Linear, Square};
        // s0 = conv(x), s1 = s0², s2 = conv(s1) + x: the skip input sits two levels higher.
        let mut stages = chain(&[Linear, Square, Linear]);
        stages[2].inputs = vec![2, 0];
        let q = vec![2f64.powi(40); 8];
        assert_eq!(depth(&stages), 3);
        let plan = assign(&stages, &q, 5, 40.0, None).unwrap();
        assert_eq!(plan.stages[2].level_in, 3);
        assert_eq!(plan.output_level(), 2);
        // Two residual blocks in a row need the longest path's levels, not their sum.
        let mut two = chain(&[Linear, Square, Linear, Linear, Square, Linear]);
        two[2].inputs = vec![2, 0];
        two[5].inputs = vec![5, 3];
        assert_eq!(depth(&two), 6);
        assert_eq!(depth(&chain(&[Linear, Square, Linear])), 3);
    }

    #[test]
    fn refreshes_are_the_fewest_and_as_late_as_possible() {
        use StageKind::{Keep, Linear, Square};
        let stages = chain(&[Linear, Square, Keep, Linear, Square, Linear, Square, Linear]);
        let q = vec![2f64.powi(40); 8];
        // Enough levels: none.
        let plan = assign(&stages, &q, 7, 40.0, None).unwrap();
        assert!(plan.refreshes().is_empty());
        assert_eq!(plan.output_level(), 0);
        assert!((plan.stages[1].log_scale_out - 40.0).abs() < 1e-9);
        // Three levels and refreshes back to three: 7 levels need ⌈(7 − 3) / 3⌉ = 2.
        let plan = assign(&stages, &q, 3, 40.0, Some(RefreshSpec { level: 3 })).unwrap();
        // Two, and every stage has a level to run at.
        assert_eq!(plan.refreshes().len(), 2, "{}", plan.describe());
        assert_eq!(plan.refreshed_cts(), 2);
        assert!(
            plan.stages
                .iter()
                .all(|s| s.level_in >= 1 || s.name == "s2")
        );
        assert!(
            plan.stages
                .iter()
                .all(|s| s.level_out < s.level_in || s.name == "s2")
        );
        // No refresh: the stage that runs out is named.
        let e = assign(&stages, &q, 3, 40.0, None).unwrap_err();
        assert!(
            matches!(
                e,
                NnError::OutOfLevels {
                    index: 4,
                    depth: 7,
                    ..
                }
            ),
            "{e}"
        );
        // A refresh that gives back no level cannot help.
        let e = assign(&stages, &q, 3, 40.0, Some(RefreshSpec { level: 0 })).unwrap_err();
        assert!(
            matches!(e, NnError::RefreshPlacement { index: 4, .. }),
            "{e}"
        );
    }

    /// `blocks` residual blocks after a stem: conv, square, conv + shortcut, square.
    fn resnet(blocks: usize) -> Vec<Stage> {
        use StageKind::{Linear, Square};
        let mut kinds = vec![Linear, Square];
        for _ in 0..blocks {
            kinds.extend([Linear, Square, Linear, Square]);
        }
        kinds.push(Linear);
        let mut stages = chain(&kinds);
        for b in 0..blocks {
            // The block's input is value 2 + 4b; its second convolution (stage 4 + 4b) also
            // reads it.
            stages[4 + 4 * b].inputs = vec![4 + 4 * b, 2 + 4 * b];
        }
        stages
    }

    #[test]
    fn refreshes_go_where_one_value_holds_everything_later_stages_read() {
        let stages = resnet(4);
        assert_eq!(depth(&stages), 19);
        // Inside a block the shortcut is live until the addition: only the stem's stages
        // and each block's addition and last activation are cuts.
        assert_eq!(cuts(&stages), vec![0, 1, 4, 5, 8, 9, 12, 13, 16, 17]);
        let q = vec![2f64.powi(40); 12];
        let r = Some(RefreshSpec { level: 9 });
        let plan = assign(&stages, &q, 9, 40.0, r).unwrap();
        // Nine levels hold two blocks (eight levels) at a time: the stem and one block
        // (six), then two blocks, then the last block and the head (five).
        assert_eq!(plan.refreshes().len(), 2, "{}", plan.describe());
        for i in plan.refreshes() {
            assert!(cuts(&stages).contains(&i));
        }
        // Every stage runs with a level to spare, and the additions at their inputs' level.
        assert!(plan.stages.iter().all(|s| s.level_in >= 1));
        // A wider block output costs more to refresh: the placement avoids it when another
        // with as few refreshes exists.
        let mut wide = resnet(4);
        wide[9].cts = 4;
        let plan = assign(&wide, &q, 9, 40.0, r).unwrap();
        assert!(!plan.refreshes().contains(&9), "{}", plan.describe());
        assert_eq!(plan.refreshed_cts(), 2);
        // Three levels are enough (refreshing each block after its addition, then after its
        // activation), two are not: a block's input lives until its addition, three
        // levels later.
        assert!(assign(&stages, &q, 4, 40.0, Some(RefreshSpec { level: 3 })).is_ok());
        let e = assign(&stages, &q, 4, 40.0, Some(RefreshSpec { level: 2 })).unwrap_err();
        assert!(matches!(e, NnError::RefreshPlacement { .. }), "{e}");
    }
}
