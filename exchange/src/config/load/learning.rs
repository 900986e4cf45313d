//! `[learning]`: the model directory, training parameters and continuous retraining.

use super::reader::{number, Problems, Section};
use crate::config::LearningConfig;

/// Longest model directory path accepted.
const PATH_LEN_MAX: usize = 4096;

pub(super) fn read_learning(mut s: Section<'_>, p: &mut Problems) -> LearningConfig {
    let d = LearningConfig::default();
    let models_dir = match s.str_opt(p, "models_dir") {
        None => d.models_dir.clone(),
        Some(v) if !v.is_empty() && v.trim() != v => {
            p.at(&s.path_of("models_dir"), super::reader::EDGE_SPACE);
            d.models_dir.clone()
        }
        Some(v) if !v.is_empty() && v.len() <= PATH_LEN_MAX && !v.contains('\0') => v.into(),
        Some(_) => {
            p.at(
                &s.path_of("models_dir"),
                "must be a directory path (1 to 4096 bytes)",
            );
            d.models_dir.clone()
        }
    };
    let watch_ms = s.u64_or(p, "watch_ms", 0, 86_400_000, d.watch_ms);
    let retrain_every_s = s.u64_or(p, "retrain_every_s", 0, 365 * 86_400, d.retrain_every_s);
    let retrain_after_dispositions = s.u64_or(
        p,
        "retrain_after_dispositions",
        0,
        1_000_000_000,
        d.retrain_after_dispositions,
    );
    let min_rows = s.usize_or(p, "min_rows", 10, 100_000_000, d.min_rows);
    let heldout_pct = s.u32_opt(p, "heldout_pct", 5, 50).unwrap_or(d.heldout_pct);
    let heldout_max_rows = s.usize_or(p, "heldout_max_rows", 0, 100_000_000, d.heldout_max_rows);
    let half_life_rows = s.usize_or(p, "half_life_rows", 0, 100_000_000, d.half_life_rows);
    let rounds = s.u32_opt(p, "rounds", 1, 5_000).unwrap_or(d.rounds);
    let max_depth = s.u32_opt(p, "max_depth", 1, 16).unwrap_or(d.max_depth);
    let eta = match s.opt("eta") {
        None => d.eta,
        Some((path, v)) => match number(p, &path, v) {
            Some(x) if x > 0.0 && x <= 1.0 => x,
            Some(_) => {
                p.at(&path, "must be more than 0 and at most 1");
                d.eta
            }
            None => d.eta,
        },
    };
    let kept_after_s = s.u64_or(p, "kept_after_s", 0, 366 * 86_400, d.kept_after_s);
    s.finish(p);
    LearningConfig {
        models_dir,
        watch_ms,
        retrain_every_s,
        retrain_after_dispositions,
        min_rows,
        heldout_pct,
        heldout_max_rows,
        half_life_rows,
        rounds,
        max_depth,
        eta,
        kept_after_s,
    }
}
