//! When a watch is polled next: the cadence while its state holds, and the backoff
//! after transient errors. Pure functions of their inputs (the random source and
//! the learned history are passed in), so schedules are checked exactly in tests.

use std::time::Duration;

use rand::Rng;

/// How a running watch's next poll is chosen (`poller.cadence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// A short first interval that grows by `growth` while the state holds, reset
    /// when it changes: what every hand-written client does.
    #[default]
    Backoff,
    /// From the history of how long jobs of the kind took (`history`): often
    /// where ends are likely, rarely in the long tail; the backoff cadence while
    /// the kind has too few ends to learn from.
    Learned,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Backoff => "backoff",
            Policy::Learned => "learned",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub initial: Duration,
    pub max: Duration,
    pub growth: f64,
    pub jitter: f64,
    pub error_base: Duration,
    pub error_max: Duration,
    pub policy: Policy,
    /// The learned cadence's price of a poll, in seconds of expected detection
    /// delay it must save (`poller.poll_price`).
    pub price: Duration,
}

impl Cadence {
    /// The cadence `poller` settings give, with `upstream`'s error backoff.
    pub fn of(
        poller: &crate::config::PollerSettings,
        upstream: &crate::config::UpstreamSettings,
    ) -> Cadence {
        Cadence {
            initial: poller.initial_interval,
            max: poller.max_interval,
            growth: poller.growth,
            jitter: poller.jitter,
            error_base: upstream.error_backoff_base,
            error_max: upstream.error_backoff_max,
            policy: poller.cadence,
            price: poller.poll_price,
        }
    }

    /// The interval after a successful poll: back to `initial` when the state
    /// changed, else the previous interval grown by `growth`, capped at `max`.
    pub fn next_interval(&self, previous: Duration, state_changed: bool) -> Duration {
        if state_changed || previous.is_zero() {
            self.initial
        } else {
            previous.mul_f64(self.growth).clamp(self.initial, self.max)
        }
    }

    /// `interval` spread by ±`jitter` so watches posted together drift apart.
    pub fn jittered(&self, interval: Duration, rng: &mut (impl Rng + ?Sized)) -> Duration {
        if self.jitter <= 0.0 {
            return interval;
        }
        interval.mul_f64(1.0 + rng.random_range(-self.jitter..=self.jitter))
    }

    /// Exponential backoff with full jitter after the `n`th consecutive error
    /// (n >= 1): uniform in `[0, min(error_max, error_base * 2^(n-1))]`, with a
    /// small floor so a watch never spins.
    pub fn error_backoff(&self, n: u32, rng: &mut (impl Rng + ?Sized)) -> Duration {
        let ceiling = self.error_ceiling(n);
        let floor = Duration::from_millis(50).min(ceiling);
        ceiling.mul_f64(rng.random_range(0.0..=1.0)).max(floor)
    }

    /// The upper bound of `error_backoff(n)`.
    pub fn error_ceiling(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(30);
        self.error_base
            .saturating_mul(1u32 << exp)
            .min(self.error_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cadence() -> Cadence {
        Cadence {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            growth: 1.5,
            jitter: 0.2,
            error_base: Duration::from_secs(1),
            error_max: Duration::from_secs(300),
            policy: Policy::Backoff,
            price: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_interval_grows_while_the_state_holds_and_resets_on_a_change() {
        let c = cadence();
        let mut i = c.next_interval(Duration::ZERO, false);
        let mut seen = vec![i.as_secs_f64()];
        for _ in 0..12 {
            i = c.next_interval(i, false);
            seen.push(i.as_secs_f64());
        }
        assert_eq!(&seen[..4], &[2.0, 3.0, 4.5, 6.75]);
        assert_eq!(*seen.last().unwrap(), 60.0, "capped at max: {seen:?}");
        assert_eq!(c.next_interval(i, true), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let c = cadence();
        let mut rng = StdRng::seed_from_u64(7);
        let all: Vec<f64> = (0..1000)
            .map(|_| c.jittered(Duration::from_secs(10), &mut rng).as_secs_f64())
            .collect();
        assert!(all.iter().all(|s| (8.0..=12.0).contains(s)));
        let spread = all.iter().cloned().fold(f64::MIN, f64::max)
            - all.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 3.0, "jitter spreads polls: {spread}");
    }

    #[test]
    fn without_jitter_the_cadence_is_exact() {
        let c = Cadence {
            jitter: 0.0,
            ..cadence()
        };
        let mut rng = StdRng::seed_from_u64(3);
        for s in [1, 2, 60] {
            let d = Duration::from_secs(s);
            assert_eq!(c.jittered(d, &mut rng), d);
        }
    }

    #[test]
    fn the_same_random_source_gives_the_same_schedule() {
        let c = cadence();
        let schedule = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=8)
                .map(|n| c.error_backoff(n, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(schedule(42), schedule(42));
        assert_ne!(schedule(42), schedule(43));
    }

    #[test]
    fn error_backoff_never_spins() {
        let c = cadence();
        let mut rng = StdRng::seed_from_u64(9);
        assert!((0..10_000).all(|_| c.error_backoff(1, &mut rng) >= Duration::from_millis(50)));
        // A base below the floor: the ceiling is the floor and the wait is exact.
        let tiny = Cadence {
            error_base: Duration::from_millis(10),
            ..cadence()
        };
        assert_eq!(tiny.error_backoff(1, &mut rng), Duration::from_millis(10));
        // n = 0 is treated as the first error, not an underflow.
        assert_eq!(c.error_ceiling(0), Duration::from_secs(1));
    }

    #[test]
    fn the_first_error_waits_at_most_the_base() {
        let c = cadence();
        let mut rng = StdRng::seed_from_u64(5);
        let draws: Vec<Duration> = (0..1000).map(|_| c.error_backoff(1, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(1)));
        let mean = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "uniform over [0, base]: {mean}");
    }

    #[test]
    fn error_backoff_doubles_up_to_the_cap_with_full_jitter() {
        let c = cadence();
        let ceilings: Vec<u64> = (1..=11).map(|n| c.error_ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(c.error_ceiling(u32::MAX), Duration::from_secs(300));
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<Duration> = (0..1000).map(|_| c.error_backoff(5, &mut rng)).collect();
        assert!(draws
            .iter()
            .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_secs(16)));
        assert!(
            draws.iter().any(|d| *d < Duration::from_secs(4)),
            "full jitter reaches low values"
        );
        assert!(
            draws.iter().any(|d| *d > Duration::from_secs(12)),
            "and high ones"
        );
    }
}
