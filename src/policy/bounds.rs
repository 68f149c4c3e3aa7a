//! The ranges operator-supplied durations and counts must fall in, checked
//! when a policy or a flag is loaded. Each value is later turned into
//! seconds as `f64`, microseconds as `u64`, TTLs and Lua doubles; inside
//! these ranges every such computation stays exact and in range, so no
//! setting can make tollgate panic, wrap around or silently mean something
//! else. Each bound is far beyond any sensible setting.

use std::time::Duration;

/// The longest duration any setting may be written as (ten years).
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Clock skew tolerated on token times (user tokens' `leeway`, app tokens'
/// `leeway`): at most ten minutes; more turns expiry into a suggestion.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// How far ahead an app token's `exp` may lie (`maxLifetime`): at most
/// twelve hours (attestation tokens live minutes).
pub const MAX_APP_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// How old a signature's `created` may be (`signature.maxAge`): at most an
/// hour (a signature is made for one request, now).
pub const MAX_SIGNATURE_AGE: Duration = Duration::from_secs(3600);

/// How long nonces are promised to be remembered (`replay.window`): at
/// most a day; every acceptance window it must cover is shorter.
pub const MAX_REPLAY_WINDOW: Duration = Duration::from_secs(86_400);

/// The largest count of a calendar quota (and so of a route's `cost`):
/// 2^53, below which the store script's doubles count exactly.
pub const MAX_QUOTA_REQUESTS: u64 = 1 << 53;

/// `field: …` when `value` lies outside `min..=max`.
pub fn duration(field: &str, value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(format!(
        "{field}: must be between {} and {}",
        describe(min),
        describe(max)
    ))
}

/// `1h`, `10m`, `30s` or `500ms`: a bound as a policy writes it.
fn describe(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_described_as_written() {
        let secs = Duration::from_secs;
        assert_eq!(
            duration("leeway", secs(601), Duration::ZERO, MAX_LEEWAY),
            Err("leeway: must be between 0ms and 10m".to_owned())
        );
        assert!(duration("x", secs(3600), secs(1), MAX_SIGNATURE_AGE).is_ok());
        assert_eq!(describe(MAX_REPLAY_WINDOW), "1d");
        assert_eq!(describe(MAX_APP_TOKEN_LIFETIME), "12h");
        assert_eq!(describe(Duration::from_millis(1500)), "1500ms");
        // The longest duration, in the units every computation uses, stays
        // exact and in range.
        assert!(MAX_DURATION.as_secs_f64() < 2f64.powi(53));
        assert!(u64::try_from(MAX_DURATION.as_micros()).is_ok());
    }
}
