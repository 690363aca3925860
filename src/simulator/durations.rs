//! How long simulated jobs run: `--durations [KIND=]SPEC`, a named distribution per
//! kind, drawn deterministically from the job's hash like every other draw.
//!
//! `uniform` (in `[--min-running, --max-running]`, the default, or `uniform:MIN,MAX`),
//! `lognormal:MEDIAN,SIGMA`, `bimodal:FIRST,SECOND,SHARE[,SIGMA]` (two lognormal modes,
//! SHARE of the jobs around FIRST, each of spread SIGMA, 0.25 by default) and
//! `pareto:SCALE,ALPHA` (at least SCALE, a heavy tail that thins as ALPHA grows).
//! The cadence study (`jobwatch bench --cadence-study`) draws its jobs from the
//! same code.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest running time drawn: a heavy tail must still end in a run.
pub const LONGEST: Duration = Duration::from_secs(30 * 86_400);
/// A bimodal mode's spread when the spec gives none.
const BIMODAL_SIGMA: f64 = 0.25;

/// A distribution of running times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Uniform in the bounds given, or in `[--min-running, --max-running]`.
    Uniform(Option<(Duration, Duration)>),
    /// `median * exp(sigma * Z)`, Z standard normal.
    Lognormal { median: Duration, sigma: f64 },
    /// With probability `share` lognormal around `first`, else around `second`.
    Bimodal {
        first: Duration,
        second: Duration,
        share: f64,
        sigma: f64,
    },
    /// `scale / U^(1/alpha)`: P(T > t) = (scale / t)^alpha.
    Pareto { scale: Duration, alpha: f64 },
}

impl Distribution {
    /// The running time a uniform 64-bit `draw` lands on; `uniform` is the
    /// simulator's bounds for `Uniform(None)`.
    pub fn draw(&self, draw: u64, uniform: (Duration, Duration)) -> Duration {
        match *self {
            Distribution::Uniform(bounds) => {
                let (lo, hi) = bounds.unwrap_or(uniform);
                // The top 53 bits make a uniform f64 in [0, 1) (as the simulator always drew).
                let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
                lo + (hi - lo).mul_f64(unit)
            }
            Distribution::Lognormal { median, sigma } => lognormal(median, sigma, open_unit(draw)),
            Distribution::Bimodal {
                first,
                second,
                share,
                sigma,
            } => {
                // The mode from other bits of the same draw than the spread.
                let which = open_unit(super::jobs::splitmix64(draw));
                let median = if which < share { first } else { second };
                lognormal(median, sigma, open_unit(draw))
            }
            Distribution::Pareto { scale, alpha } => {
                let secs = scale.as_secs_f64() / open_unit(draw).powf(1.0 / alpha);
                seconds(secs)
            }
        }
    }
}

/// A uniform draw in (0, 1): never 0 or 1, whose quantiles are infinite.
fn open_unit(draw: u64) -> f64 {
    ((draw >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

fn lognormal(median: Duration, sigma: f64, u: f64) -> Duration {
    seconds(median.as_secs_f64() * (sigma * normal_quantile(u)).exp())
}

fn seconds(secs: f64) -> Duration {
    if secs.is_finite() && secs >= 0.0 {
        Duration::from_secs_f64(secs).min(LONGEST)
    } else {
        LONGEST
    }
}

/// The standard normal quantile (Acklam's rational approximation, relative error
/// below 1.2e-9: far finer than a running time needs).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let low = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < low {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - low {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// One `--durations` value: a distribution, for one kind or (without `KIND=`) for
/// every kind that has none of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationsArg {
    pub kind: Option<String>,
    pub distribution: Distribution,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --durations `{input}`: {reason} (expected [KIND=]uniform[:MIN,MAX] | lognormal:MEDIAN,SIGMA | bimodal:FIRST,SECOND,SHARE[,SIGMA] | pareto:SCALE,ALPHA)")]
pub struct ParseDurationsError {
    input: String,
    reason: String,
}

impl FromStr for DurationsArg {
    type Err = ParseDurationsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ParseDurationsError {
            input: s.to_string(),
            reason,
        };
        let (kind, spec) = match s.split_once('=') {
            Some((k, spec)) => {
                let k = k.trim();
                if k != "copy" && k != "delete" {
                    return Err(fail(format!(
                        "`{k}` is not a simulated kind (copy, delete; every other shape's jobs are copy)"
                    )));
                }
                (Some(k.to_string()), spec.trim())
            }
            None => (None, s.trim()),
        };
        let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
        let args: Vec<&str> = args
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let time = |a: &str| {
            humantime::parse_duration(a)
                .map_err(|e| fail(format!("`{a}` is not a duration: {e}")))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(fail(format!("`{a}` must be above 0")))
                    } else {
                        Ok(d)
                    }
                })
        };
        let number = |a: &str, what: &str, ok: &dyn Fn(f64) -> bool| {
            a.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && ok(*v))
                .ok_or_else(|| fail(format!("`{a}` is not a valid {what}")))
        };
        let sigma_ok = |v: f64| (0.0..=5.0).contains(&v);
        let count = |n: &[usize]| {
            if n.contains(&args.len()) {
                Ok(())
            } else {
                Err(fail(format!(
                    "`{name}` takes {n:?} values, not {}",
                    args.len()
                )))
            }
        };
        let distribution = match name.trim() {
            "uniform" => {
                count(&[0, 2])?;
                match args.as_slice() {
                    [lo, hi] => {
                        let (lo, hi) = (time(lo)?, time(hi)?);
                        Distribution::Uniform(Some((lo.min(hi), lo.max(hi))))
                    }
                    _ => Distribution::Uniform(None),
                }
            }
            "lognormal" => {
                count(&[2])?;
                Distribution::Lognormal {
                    median: time(args[0])?,
                    sigma: number(args[1], "sigma (0 to 5)", &sigma_ok)?,
                }
            }
            "bimodal" => {
                count(&[3, 4])?;
                Distribution::Bimodal {
                    first: time(args[0])?,
                    second: time(args[1])?,
                    share: number(args[2], "share (0 to 1)", &|v| (0.0..=1.0).contains(&v))?,
                    sigma: match args.get(3) {
                        Some(a) => number(a, "sigma (0 to 5)", &sigma_ok)?,
                        None => BIMODAL_SIGMA,
                    },
                }
            }
            "pareto" => {
                count(&[2])?;
                Distribution::Pareto {
                    scale: time(args[0])?,
                    alpha: number(args[1], "alpha (above 0, at most 100)", &|v| {
                        v > 0.0 && v <= 100.0
                    })?,
                }
            }
            other => return Err(fail(format!("`{other}` is not a distribution"))),
        };
        Ok(DurationsArg { kind, distribution })
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Distribution::Uniform(None) => f.write_str("uniform"),
            Distribution::Uniform(Some((lo, hi))) => write!(f, "uniform:{},{}", d(lo), d(hi)),
            Distribution::Lognormal { median, sigma } => {
                write!(f, "lognormal:{},{sigma}", d(median))
            }
            Distribution::Bimodal {
                first,
                second,
                share,
                sigma,
            } => write!(f, "bimodal:{},{},{share},{sigma}", d(first), d(second)),
            Distribution::Pareto { scale, alpha } => write!(f, "pareto:{},{alpha}", d(scale)),
        }
    }
}

impl fmt::Display for DurationsArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = &self.kind {
            write!(f, "{k}=")?;
        }
        write!(f, "{}", self.distribution)
    }
}

/// The distribution of each simulated kind (copy, delete) from the flags: a
/// kind's own, else one without a kind, else uniform.
pub fn per_kind(args: &[DurationsArg]) -> [Distribution; 2] {
    let any = args
        .iter()
        .rev()
        .find(|a| a.kind.is_none())
        .map(|a| a.distribution);
    let of = |kind: &str| {
        args.iter()
            .rev()
            .find(|a| a.kind.as_deref() == Some(kind))
            .map(|a| a.distribution)
            .or(any)
            .unwrap_or(Distribution::Uniform(None))
    };
    [of("copy"), of("delete")]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Distribution {
        s.parse::<DurationsArg>().unwrap().distribution
    }

    /// `n` draws of `d` (the simulator's hash stands in for ids).
    fn draws(d: Distribution, n: u64) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n)
            .map(|i| {
                d.draw(
                    super::super::jobs::splitmix64(i),
                    (Duration::ZERO, Duration::ZERO),
                )
                .as_secs_f64()
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn quantile(sorted: &[f64], p: f64) -> f64 {
        sorted[((sorted.len() as f64) * p) as usize]
    }

    #[test]
    fn specs_parse_print_and_refuse_what_they_should() {
        assert_eq!(parse("uniform"), Distribution::Uniform(None));
        assert_eq!(
            parse("lognormal:2m,1"),
            Distribution::Lognormal {
                median: Duration::from_secs(120),
                sigma: 1.0
            }
        );
        let a: DurationsArg = "copy=bimodal:30s,10m,0.7".parse().unwrap();
        assert_eq!(a.kind.as_deref(), Some("copy"));
        assert_eq!(a.to_string(), "copy=bimodal:30s,10m,0.7,0.25");
        assert_eq!(
            a.to_string().parse::<DurationsArg>().unwrap(),
            a,
            "what it prints reads back"
        );
        assert_eq!(parse("pareto:30s,1.5").to_string(), "pareto:30s,1.5");
        for bad in [
            "normal:1s,1",
            "lognormal:2m",
            "lognormal:0s,1",
            "lognormal:2m,-1",
            "lognormal:2m,x",
            "bimodal:1s,2s,1.5",
            "pareto:30s,0",
            "uniform:1s",
            "batch=uniform",
        ] {
            assert!(bad.parse::<DurationsArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_follow_their_distribution() {
        let n = 20_000;
        let ln = draws(parse("lognormal:2m,1"), n);
        let median = quantile(&ln, 0.5);
        assert!((112.0..128.0).contains(&median), "{median}");
        let p90 = quantile(&ln, 0.9);
        assert!(
            (400.0..465.0).contains(&p90),
            "p90 {p90} (120 e^1.28 = 432)"
        );
        let bi = draws(parse("bimodal:30s,10m,0.7"), n);
        let short = bi.iter().filter(|s| **s < 120.0).count() as f64 / n as f64;
        assert!((0.67..0.73).contains(&short), "{short}");
        let pa = draws(parse("pareto:30s,1.5"), n);
        assert!(pa[0] >= 30.0);
        let over = pa.iter().filter(|s| **s > 300.0).count() as f64 / n as f64;
        // P(T > 10 scale) = 10^-1.5
        assert!((0.026..0.037).contains(&over), "{over}");
        let un = draws(parse("uniform:10s,20s"), n);
        assert!(un[0] >= 10.0 && un[un.len() - 1] <= 20.0);
    }

    #[test]
    fn the_default_uniform_draw_is_unchanged() {
        let d = Distribution::Uniform(None);
        let bounds = (Duration::from_secs(2), Duration::from_secs(30));
        // The formula the simulator always used: the same seed, the same running times.
        let draw = 0xdead_beef_cafe_f00d_u64;
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        assert_eq!(
            d.draw(draw, bounds),
            bounds.0 + (bounds.1 - bounds.0).mul_f64(unit)
        );
    }

    #[test]
    fn each_kind_takes_its_own_spec_else_the_common_one() {
        let args: Vec<DurationsArg> = ["lognormal:1m,1", "delete=pareto:1s,2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let [copy, delete] = per_kind(&args);
        assert_eq!(copy, parse("lognormal:1m,1"));
        assert_eq!(delete, parse("pareto:1s,2"));
        assert_eq!(per_kind(&[]), [Distribution::Uniform(None); 2]);
    }

    #[test]
    fn the_normal_quantile_is_the_inverse_of_the_normal_distribution() {
        for (p, z) in [
            (0.5, 0.0),
            (0.8413447, 1.0),
            (0.0227501, -2.0),
            (0.99865, 3.0),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-4, "{p}");
        }
        assert!(normal_quantile(0.0).is_finite() && normal_quantile(1.0).is_finite());
    }
}
