//! Level assignment: a pass over a plan, run by a simulator without cryptography, that
//! follows the level and scale of every value through the plan's stages on the actual
//! primes of a parameter set and decides where a refresh (bootstrapping) must bring a value
//! back up.
//!
//! Placement is greedy and as late as possible: a refresh is inserted only before a stage
//! that would otherwise run out of levels. For a chain of stages that is the fewest
//! refreshes possible (any placement needs one per `levels` consumed after the first
//! `top`). Today no scheme of hecnn refreshes inside a network, so compiled plans carry no
//! refresh ([`RefreshSpec`] is `None`) and a plan deeper than its parameters is refused;
//! the bootstrapping issue provides the spec, and the runtimes already execute the points
//! ([`crate::single::SinglePlan::with_refreshes`]).

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
}

/// Level and scale of one stage's output.
#[derive(Clone, Debug, PartialEq)]
pub struct StageLevels {
    /// The stage's name.
    pub name: String,
    /// Whether a refresh runs before the stage.
    pub refresh_before: bool,
    /// Level of the stage's input (after any refresh).
    pub level_in: usize,
    /// Level of its output.
    pub level_out: usize,
    /// log2 of its output's scale.
    pub log_scale_out: f64,
}

/// The levels of every stage, and where refreshes run.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelPlan {
    /// The inputs' level.
    pub top: usize,
    /// Every stage, in order.
    pub stages: Vec<StageLevels>,
}

impl LevelPlan {
    /// Indices of the stages a refresh runs before.
    pub fn refreshes(&self) -> BTreeSet<usize> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.refresh_before)
            .map(|(i, _)| i)
            .collect()
    }

    /// The output's level.
    pub fn output_level(&self) -> usize {
        self.stages.last().map_or(self.top, |s| s.level_out)
    }

    /// One line per level-consuming stage, for reports.
    pub fn describe(&self) -> String {
        let mut out = format!("levels: inputs at {}", self.top);
        for s in &self.stages {
            if s.refresh_before {
                let _ = write!(out, " → refresh to {}", s.level_in);
            }
            if s.level_out != s.level_in {
                let _ = write!(
                    out,
                    " → {} {} (2^{:.1})",
                    s.name, s.level_out, s.log_scale_out
                );
            }
        }
        let _ = write!(out, "; {} refresh(es)", self.refreshes().len());
        out
    }
}

/// Assigns levels to `stages` for inputs at level `top` and scale `2^log_scale`, with the
/// primes `q` (`q[l]` dropped by a rescale at level `l`), inserting a refresh before any
/// stage that would run out of levels when `refresh` says what one gives back.
///
/// # Errors
/// [`NnError::OutOfLevels`] naming the stage that runs out of levels when there is no
/// refresh, or when a refresh gives back too few levels for one stage.
pub fn assign(
    stages: &[Stage],
    q: &[f64],
    top: usize,
    log_scale: f64,
    refresh: Option<RefreshSpec>,
) -> Result<LevelPlan, NnError> {
    // Level and log2 scale of every value.
    let mut at: Vec<(usize, f64)> = vec![(top, log_scale)];
    let mut out = Vec::with_capacity(stages.len());
    for (i, stage) in stages.iter().enumerate() {
        let (mut level, mut log_scale_now) = stage
            .inputs
            .iter()
            .filter_map(|&v| at.get(v).copied())
            .min_by_key(|&(l, _)| l)
            .unwrap_or((top, log_scale));
        let consumes = stage.kind != StageKind::Keep;
        let mut refresh_before = false;
        if consumes && level == 0 {
            match refresh {
                Some(r) if r.level >= 1 => {
                    level = r.level;
                    refresh_before = true;
                }
                _ => {
                    return Err(NnError::OutOfLevels {
                        stage: stage.name.clone(),
                        depth: depth(stages),
                        levels: top,
                        index: i,
                    });
                }
            }
        }
        let level_in = level;
        match stage.kind {
            StageKind::Keep => {}
            StageKind::Linear => {
                // Its weights are encoded to bring the output back to the nominal scale.
                level -= 1;
                log_scale_now = log_scale;
            }
            StageKind::Square => {
                let q_l = q.get(level).copied().unwrap_or(1.0).max(1.0);
                log_scale_now = 2.0 * log_scale_now - q_l.log2();
                level -= 1;
            }
        }
        at.push((level, log_scale_now));
        out.push(StageLevels {
            name: stage.name.clone(),
            refresh_before,
            level_in,
            level_out: level,
            log_scale_out: log_scale_now,
        });
    }
    Ok(LevelPlan { top, stages: out })
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
        assert_eq!(plan.refreshes(), BTreeSet::from([4, 7]));
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
        assert!(assign(&stages, &q, 3, 40.0, Some(RefreshSpec { level: 0 })).is_err());
    }
}
