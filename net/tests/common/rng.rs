//! The one seeded random number generator of the tests: SplitMix64, so that a run is
//! replayed from its seed alone, whatever the versions of our dependencies.

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, a full period, good enough
/// statistics for choosing test operations.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }

    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi as i128 - lo as i128 + 1) as u128;
        (lo as i128 + (self.next() as u128 % span) as i128) as i64
    }

    /// An independent generator for a part of the test (a writer, a round), so that the
    /// parts do not consume each other's numbers.
    pub fn fork(&mut self, salt: u64) -> Rng {
        Rng(self.next() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

/// A number from the environment variable `name` (decimal or `0x` hex), else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}"))
        }
        Err(_) => default,
    }
}

/// The seed of a run: `name` from the environment, else `default` (a fixed seed: the
/// same run every time), printed with how to replay it.
pub fn seed(name: &str, default: u64) -> u64 {
    let seed = env_number(name, default);
    println!("seed {seed:#x} (replay with {name}={seed:#x})");
    seed
}

/// The seed of a run that explores: `name` from the environment, else one from the
/// clock (a new run every time), printed with how to replay it.
pub fn fresh_seed(name: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    seed(name, now)
}
