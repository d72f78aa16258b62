//! A seeded pseudo-random generator, so that a test's random choices are the same on every run
//! and a failure can be replayed from its seed.

/// `SplitMix64` (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014): one addition and three multiply-xorshift steps per draw, every seed usable.
/// Not for anything that needs unpredictability.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; panics when `n` is zero.
    ///
    /// Lemire's multiply-shift: the high half of a 64 × 64-bit product. Its bias, at most
    /// `n / 2^64`, is far below anything a test could notice.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "no number below zero");
        let n64 = u64::try_from(n).expect("usize fits in u64");
        let high = (u128::from(self.next_u64()) * u128::from(n64)) >> 64;
        usize::try_from(high).expect("below n, which is a usize")
    }

    /// `count` distinct indices of `0..n`, in the order drawn; panics when `count > n`.
    pub fn distinct(&mut self, n: usize, count: usize) -> Vec<usize> {
        assert!(count <= n, "{count} distinct numbers below {n}");
        // A partial Fisher-Yates shuffle: the first `count` places are the draw.
        let mut pool: Vec<usize> = (0..n).collect();
        for i in 0..count {
            let j = i + self.below(n - i);
            pool.swap(i, j);
        }
        pool.truncate(count);
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_draws_stay_in_range() {
        let draws = |seed| {
            let mut rng = Rng::seeded(seed);
            (0..100).map(|_| rng.below(7)).collect::<Vec<_>>()
        };
        assert_eq!(draws(1), draws(1));
        assert_ne!(draws(1), draws(2));
        assert!(draws(3).iter().all(|d| *d < 7));
        // Every value comes up: the draw is not stuck on part of the range.
        let seen: std::collections::BTreeSet<usize> = draws(4).into_iter().collect();
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn distinct_draws_have_no_repeats() {
        let mut rng = Rng::seeded(9);
        for count in 0..=5 {
            let mut d = rng.distinct(5, count);
            assert_eq!(d.len(), count);
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), count);
            assert!(d.iter().all(|i| *i < 5));
        }
    }

    #[test]
    fn first_output_matches_the_reference_implementation() {
        // splitmix64.c by Sebastiano Vigna, seeded with 0: first output.
        assert_eq!(Rng::seeded(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }
}
