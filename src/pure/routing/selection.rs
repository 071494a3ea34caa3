//! Smooth weighted round robin (as in nginx): over any window of picks each
//! instance gets its share of the weight, interleaved rather than in bursts, with
//! no allocation per pick.

/// Nacos weights are decimals; two decimal places are kept as integer units.
const WEIGHT_SCALE: f64 = 100.0;
/// Nacos caps weights at 10000; anything higher is held there.
const MAX_UNITS: i64 = 1_000_000;
/// Picks a fresh rotation skips at most: enough to spread VMs over any list a
/// service has, cheap enough for every rebuild.
const MAX_SKIP: i64 = 4096;

#[derive(Debug, Clone, Default)]
pub struct WeightedRoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl WeightedRoundRobin {
    /// Start over with these weights (one per candidate, same order).
    pub fn reset(&mut self, weights: impl IntoIterator<Item = f64>) {
        self.weights.clear();
        self.weights.extend(weights.into_iter().map(weight_units));
        self.current.clear();
        self.current.resize(self.weights.len(), 0);
    }

    /// New weights for a changed list, keeping the rotation of the candidates that
    /// stay: `previous(i)` is the index candidate `i` had before, if it had one. A
    /// newcomer starts level, and the state is re-centred so that nobody is owed
    /// a burst or held back by those that left.
    pub fn carry_over(
        &mut self,
        weights: impl IntoIterator<Item = f64>,
        previous: impl Fn(usize) -> Option<usize>,
    ) {
        let old = std::mem::take(&mut self.current);
        self.reset(weights);
        for (index, current) in self.current.iter_mut().enumerate() {
            *current = previous(index)
                .and_then(|before| old.get(before))
                .copied()
                .unwrap_or(0);
        }
        let count = i64::try_from(self.current.len()).unwrap_or(i64::MAX).max(1);
        let mean = self.current.iter().sum::<i64>() / count;
        for current in &mut self.current {
            *current -= mean;
        }
    }

    /// Advance by `picks` picks (fewer for long cycles): VMs built from the same
    /// list then start at different places in the rotation instead of all sending
    /// their first request to the first instance.
    pub fn skip(&mut self, picks: u64) {
        let cycle: i64 = self.weights.iter().filter(|w| **w > 0).sum();
        let picks = picks % u64::try_from(cycle.clamp(1, MAX_SKIP)).unwrap_or(1);
        for _ in 0..picks {
            self.pick();
        }
    }

    /// Index of the next candidate; `None` when no candidate has weight.
    pub fn pick(&mut self) -> Option<usize> {
        self.pick_where(|_| true)
    }

    /// Like [`pick`](Self::pick), among the candidates `allowed` accepts.
    pub fn pick_where(&mut self, mut allowed: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (index, (weight, current)) in
            self.weights.iter().zip(self.current.iter_mut()).enumerate()
        {
            if *weight <= 0 || !allowed(index) {
                continue;
            }
            *current += weight;
            total += weight;
            if best.is_none_or(|(_, best_current)| *current > best_current) {
                best = Some((index, *current));
            }
        }
        let (index, _) = best?;
        if let Some(current) = self.current.get_mut(index) {
            *current -= total;
        }
        Some(index)
    }
}

fn weight_units(weight: f64) -> i64 {
    if !(weight.is_finite() && weight > 0.0) {
        return 0;
    }
    // A positive weight always keeps at least one unit: it is still a valid choice.
    ((weight * WEIGHT_SCALE).round() as i64).clamp(1, MAX_UNITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn counts(weights: &[f64], picks: usize) -> Vec<usize> {
        let mut wrr = WeightedRoundRobin::default();
        wrr.reset(weights.iter().copied());
        let mut counts = vec![0; weights.len()];
        for _ in 0..picks {
            counts[wrr.pick().unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn picks_follow_the_weights_exactly_over_a_full_cycle() {
        assert_eq!(counts(&[1.0, 3.0], 400), vec![100, 300]);
        assert_eq!(counts(&[1.0, 1.0, 2.0], 4000), vec![1000, 1000, 2000]);
        assert_eq!(counts(&[0.5, 1.5], 2000), vec![500, 1500]);
    }

    #[test]
    fn picks_are_interleaved_not_bursts() {
        let mut wrr = WeightedRoundRobin::default();
        wrr.reset([1.0, 1.0]);
        let sequence: Vec<usize> = (0..6).map(|_| wrr.pick().unwrap()).collect();
        assert_eq!(sequence, vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn zero_negative_and_nan_weights_are_never_picked() {
        assert_eq!(
            counts(&[0.0, 2.0, -1.0, f64::NAN], 1000),
            vec![0, 1000, 0, 0]
        );
    }

    #[test]
    fn nothing_to_pick_gives_none() {
        let mut wrr = WeightedRoundRobin::default();
        assert_eq!(wrr.pick(), None);
        wrr.reset([0.0, 0.0]);
        assert_eq!(wrr.pick(), None);
    }

    #[test]
    fn tiny_and_huge_weights_stay_in_range() {
        assert_eq!(weight_units(0.001), 1);
        assert_eq!(weight_units(1e300), MAX_UNITS);
        assert_eq!(counts(&[0.001, 1e300], 10), vec![0, 10]);
    }

    #[test]
    fn carrying_over_keeps_the_rotation_of_those_that_stay() {
        let mut wrr = WeightedRoundRobin::default();
        wrr.reset([1.0, 1.0, 1.0, 1.0]);
        let mut counts = [0usize; 4];
        // A list that keeps changing (an instance leaves and comes back) while
        // requests are rare: every stayer still gets its share.
        for round in 0..400 {
            if round % 2 == 0 {
                wrr.carry_over([1.0, 1.0, 1.0], Some);
            } else {
                wrr.carry_over([1.0, 1.0, 1.0, 1.0], |i| (i < 3).then_some(i));
            }
            counts[wrr.pick().unwrap()] += 1;
        }
        // The stayers share evenly; the one that comes and goes starts level
        // each time and gets no more than its share of the rounds it is in.
        let stayers = &counts[..3];
        assert!(
            stayers.iter().max().unwrap() - stayers.iter().min().unwrap() <= 2,
            "{counts:?}"
        );
        assert!(counts[3] <= 50, "{counts:?}");
    }

    #[test]
    fn skipping_spreads_the_first_pick() {
        let firsts: std::collections::BTreeSet<usize> = (0..40)
            .map(|seed| {
                let mut wrr = WeightedRoundRobin::default();
                wrr.reset([1.0; 4]);
                wrr.skip(seed * 7919);
                wrr.pick().unwrap()
            })
            .collect();
        assert_eq!(firsts.len(), 4, "{firsts:?}");
    }

    #[test]
    fn pick_where_skips_refused_candidates() {
        let mut wrr = WeightedRoundRobin::default();
        wrr.reset([1.0, 1.0, 1.0]);
        for _ in 0..30 {
            assert_ne!(wrr.pick_where(|index| index != 1), Some(1));
        }
        assert_eq!(wrr.pick_where(|_| false), None);
    }
}
