//! `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date in any of the
//! three forms (IMF-fixdate, obsolete RFC 850, asctime), which `httpdate` parses.

use std::time::{Duration, SystemTime};

/// How long the header asks us to wait from `now`; `None` when it is not valid.
/// A date in the past means "now" (zero).
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate instead of failing.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX / 2),
        ));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Clamp an honoured delay to `[min, max]` (`max` wins should the bounds cross,
/// where `Duration::clamp` would panic).
pub fn clamp(d: Duration, min: Duration, max: Duration) -> Duration {
    d.max(min).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    // Sun, 06 Nov 1994 08:49:37 GMT, the RFC's own example.
    const RFC_EXAMPLE: u64 = 784_111_777;

    #[test]
    fn delay_seconds() {
        assert_eq!(parse("120", at(0)), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 ", at(0)), Some(Duration::ZERO));
        assert_eq!(
            parse("99999999999999999999999", at(0)).map(|d| d > Duration::from_secs(1 << 40)),
            Some(true)
        );
    }

    #[test]
    fn all_three_date_forms() {
        let now = at(RFC_EXAMPLE - 30);
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("Sun Nov  6 08:49:37 1994", now),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn a_past_date_means_now() {
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", at(RFC_EXAMPLE + 100)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(parse("soon", at(0)), None);
        assert_eq!(parse("-5", at(0)), None);
        assert_eq!(parse("1.5", at(0)), None);
        assert_eq!(parse("", at(0)), None);
    }

    #[test]
    fn a_date_counts_from_the_injected_now_to_the_millisecond() {
        let now = at(RFC_EXAMPLE - 30) + Duration::from_millis(400);
        assert_eq!(
            parse("  Sun, 06 Nov 1994 08:49:37 GMT ", now),
            Some(Duration::from_millis(29_600))
        );
        // The same instant as delay-seconds and as a date gives the same wait.
        let now = at(RFC_EXAMPLE - 120);
        assert_eq!(
            parse("120", now),
            parse("Sun, 06 Nov 1994 08:49:37 GMT", now)
        );
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", at(RFC_EXAMPLE)),
            Some(Duration::ZERO),
            "the date itself is no wait"
        );
    }

    #[test]
    fn near_misses_are_not_valid() {
        assert_eq!(parse("+5", at(0)), None);
        assert_eq!(parse("5s", at(0)), None);
        assert_eq!(parse("1 2", at(0)), None);
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 PST", at(0)), None);
        assert_eq!(parse("Sun, 06 Nov 1994", at(0)), None);
        assert_eq!(parse("1994-11-06T08:49:37Z", at(0)), None);
    }

    #[test]
    fn clamping() {
        let (lo, hi) = (Duration::from_secs(1), Duration::from_secs(600));
        assert_eq!(clamp(Duration::ZERO, lo, hi), lo);
        assert_eq!(clamp(Duration::from_secs(86_400), lo, hi), hi);
        assert_eq!(
            clamp(Duration::from_secs(30), lo, hi),
            Duration::from_secs(30)
        );
        assert_eq!(
            clamp(Duration::from_secs(30), hi, lo),
            lo,
            "crossed bounds do not panic"
        );
    }
}
