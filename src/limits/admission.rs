//! From a plan and a request's subjects to the store's [`Admission`]: which
//! key each limit counts, under which hash tag, plus the nonces to remember
//! and the usage counters to bump.
//!
//! The *primary* tag is the app's (`{a:<app>}`); a request without an app
//! uses its user's tag, else its address's, else `{anon}`. Usage goes to
//! the primary group. A nonce goes to its credential's group
//! (`keys::nonce_tag`), never to the primary: the app, user and address
//! are what the client presents with the credential, and a replay may
//! present others. Limits by subject:
//!
//! | key        | with the subject                | without it (anonymous / missing)          |
//! |------------|---------------------------------|-------------------------------------------|
//! | `app`      | app tag                         | primary tag (user, else IP)               |
//! | `app-user` | app tag, sub-key `u:<user>`     | app tag + `i:<ip>`; no app: primary       |
//! | `device`   | app tag, sub-key `d:<device>`   | app tag + `i:<ip>`; no app: primary       |
//! | `user`     | user tag                        | IP tag, else `{anon}`                     |
//! | `ip`       | IP tag                          | `{anon}`                                  |
//!
//! So an anonymous request is still limited per client, never by one bucket
//! shared by every anonymous caller.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;
use std::time::Duration;

use super::calendar::Window;
use super::{Limit, LimitKind, Plan, micros};
use crate::policy::types::LimitKey;
use crate::store::keys::Sub;
use crate::store::{
    Admission, Group, Leasing, LimitOp, NonceOp, QUOTA_KEY_GRACE_US, Retention, Rule, UsageOp, keys,
};

/// How limits count an IPv6 client: by its network of this prefix length.
/// One subscriber is usually given a whole /64 (RFC 6177, and SLAAC needs
/// one per link), so counting single addresses would let a client take a
/// fresh limit with every address it picks from its own /64. IPv4
/// addresses are counted one by one. `--ipv6-limit-prefix`, default 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Prefix(u8);

impl Ipv6Prefix {
    /// A /64: one subscriber's LAN.
    pub const DEFAULT: Self = Self(64);
    /// The widest accepted: a /32 is a whole provider's allocation.
    pub const WIDEST: u8 = 32;

    /// A prefix of `len` bits (from [`Self::WIDEST`] to 128).
    pub fn new(len: u8) -> Result<Self, String> {
        if (Self::WIDEST..=128).contains(&len) {
            Ok(Self(len))
        } else {
            Err(format!(
                "an IPv6 prefix length for limits is {} to 128 bits, got {len}",
                Self::WIDEST
            ))
        }
    }

    /// The prefix length in bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The address limits count for client `ip`: an IPv4 address as it is,
    /// an IPv6 address cut to its network (`2001:db8:1:2::` for any address
    /// of `2001:db8:1:2::/64`).
    pub fn network_of(self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.0)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

impl Default for Ipv6Prefix {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Who a request is, as far as limits care.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    pub app: Option<&'a str>,
    /// (issuer, subject) of the authenticated user.
    pub user: Option<(&'a str, &'a str)>,
    /// `keys::user_digest` of `user` when the caller already has it (kept
    /// with the verified token); computed from `user` when `None`. Must be
    /// the digest of `user`: it names the user's counters.
    pub user_digest: Option<&'a str>,
    pub device: Option<&'a str>,
    /// The client address from the trusted origin, as limits count it
    /// ([`Ipv6Prefix::network_of`]).
    pub ip: Option<IpAddr>,
}

/// A nonce to remember: a DPoP proof's `jti`, an app token's `jti` under
/// `attestation.singleUse`, a signature's `nonce`. `ttl` must cover the
/// credential's whole acceptance window (its `exp`, or `iat` + max age,
/// plus leeway): never shorter, or the credential could be replayed after
/// its nonce expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nonce {
    /// What kind of nonce (`dpop`, `attestation`, `signature`): nonces of
    /// different kinds never collide.
    pub scope: String,
    /// The key that vouches for the nonce: the DPoP proof's key thumbprint,
    /// the signature's key, the app token's attester key. The nonce is
    /// remembered under it (its hash tag and key), and under nothing else
    /// the request carries.
    pub credential: String,
    pub value: String,
    pub ttl: Duration,
}

/// What to build an admission from.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The policy id (`namespace/name`): limits of different policies never
    /// share counters.
    pub policy: &'a str,
    pub plan: Option<&'a Plan>,
    pub subject: Subject<'a>,
    /// The route's cost (default 1).
    pub cost: u64,
    pub nonces: &'a [Nonce],
    /// µs since the Unix epoch.
    pub now_us: u64,
    pub retention: Retention,
    /// Whether the policy lets hot limits be leased (`spec.leases`).
    pub leasing: Leasing,
}

/// A built admission and, parallel to each group's `limits`, the plan limit
/// (and calendar window) each op checks; parallel to each group's
/// `nonces`, the index of the [`Nonce`] in the request's list.
#[derive(Debug)]
pub struct Built<'p> {
    pub admission: Admission,
    pub limits: Vec<Vec<Counted<'p>>>,
    pub nonces: Vec<Vec<usize>>,
}

impl Built<'_> {
    /// The request's nonce behind `nonces[index]` of group `group` (what a
    /// [`crate::store::Verdict::Replay`] names).
    pub fn nonce_index(&self, group: usize, index: usize) -> Option<usize> {
        self.nonces.get(group)?.get(index).copied()
    }
}

/// One plan limit as counted for this request.
#[derive(Clone, Copy, Debug)]
pub struct Counted<'p> {
    pub limit: &'p Limit,
    /// The calendar window, for quotas.
    pub window: Option<Window>,
}

/// The tags, sub-keys and digests of one request's subjects. Each is
/// computed at most once, and only when a key needs it: most plans key by
/// app, and hashing an address costs more than the rest of a key.
struct Tags<'a> {
    subject: Subject<'a>,
    app: Option<String>,
    user_digest: Option<Cow<'a, str>>,
    user: OnceCell<Option<String>>,
    ip_digest: OnceCell<Option<String>>,
    ip: OnceCell<Option<String>>,
    device_digest: OnceCell<Option<String>>,
}

impl<'a> Tags<'a> {
    fn new(subject: Subject<'a>) -> Self {
        Self {
            subject,
            app: subject.app.map(keys::app_tag),
            user_digest: match (subject.user, subject.user_digest) {
                (Some(_), Some(digest)) => {
                    debug_assert_eq!(
                        subject
                            .user
                            .map(|(iss, sub)| keys::user_digest(iss, sub))
                            .as_deref(),
                        Some(digest),
                        "a precomputed user digest must be the user's"
                    );
                    Some(Cow::Borrowed(digest))
                }
                (user, _) => user.map(|(iss, sub)| Cow::Owned(keys::user_digest(iss, sub))),
            },
            user: OnceCell::new(),
            ip_digest: OnceCell::new(),
            ip: OnceCell::new(),
            device_digest: OnceCell::new(),
        }
    }

    fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    fn user(&self) -> Option<&str> {
        self.user
            .get_or_init(|| self.user_digest.as_deref().map(keys::user_tag_of))
            .as_deref()
    }

    fn ip_digest(&self) -> Option<&str> {
        self.ip_digest
            .get_or_init(|| self.subject.ip.map(keys::ip_digest))
            .as_deref()
    }

    fn ip(&self) -> Option<&str> {
        self.ip
            .get_or_init(|| self.ip_digest().map(keys::ip_tag_of))
            .as_deref()
    }

    fn device_digest(&self) -> Option<&str> {
        self.device_digest
            .get_or_init(|| self.subject.device.map(keys::device_digest))
            .as_deref()
    }

    /// The app's tag, else the user's, else the address's, else `{anon}`.
    fn primary(&self) -> &str {
        self.app()
            .or_else(|| self.user())
            .or_else(|| self.ip())
            .unwrap_or(keys::ANONYMOUS_TAG)
    }

    /// The tag and sub-key of a limit keyed by `key` (the table in the
    /// module docs).
    fn of(&self, key: LimitKey) -> (&str, Option<Sub<'_>>) {
        match key {
            LimitKey::App => (self.app().unwrap_or_else(|| self.primary()), None),
            LimitKey::AppUser => match (self.app(), self.user_digest.as_deref()) {
                (Some(tag), Some(user)) => (tag, Some(Sub::User(user))),
                (Some(tag), None) => (tag, self.ip_digest().map(Sub::Ip)),
                (None, _) => (self.primary(), None),
            },
            LimitKey::Device => match (self.app(), self.device_digest()) {
                (Some(tag), Some(device)) => (tag, Some(Sub::Device(device))),
                (Some(tag), None) => (tag, self.ip_digest().map(Sub::Ip)),
                (None, _) => (self.primary(), None),
            },
            LimitKey::User => (
                self.user()
                    .or_else(|| self.ip())
                    .unwrap_or(keys::ANONYMOUS_TAG),
                None,
            ),
            LimitKey::Ip => (self.ip().unwrap_or(keys::ANONYMOUS_TAG), None),
        }
    }
}

/// Builds the admission of one request.
pub fn build<'p>(request: &Request<'p>) -> Result<Built<'p>, String> {
    let tags = Tags::new(request.subject);
    let primary = tags.primary();

    let mut built = Built {
        admission: Admission {
            now_us: request.now_us,
            groups: Vec::with_capacity(1 + request.nonces.len()),
            attempt: if request.nonces.is_empty() {
                String::new()
            } else {
                attempt_id()
            },
            leasing: request.leasing,
        },
        limits: Vec::with_capacity(1 + request.nonces.len()),
        nonces: Vec::with_capacity(1 + request.nonces.len()),
    };
    let primary_index = group_index(&mut built, primary);

    for (i, nonce) in request.nonces.iter().enumerate() {
        let ttl_ms = u64::try_from(nonce.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_NONCE_TTL_MS);
        let tag = keys::nonce_tag(&nonce.scope, &nonce.credential);
        let g = group_index(&mut built, &tag);
        built.admission.groups[g].nonces.push(NonceOp {
            key: keys::nonce(&tag, &nonce.scope, &nonce.credential, &nonce.value),
            ttl_ms,
        });
        built.nonces[g].push(i);
    }

    if let Some(plan) = request.plan {
        for limit in &plan.limits {
            let (tag, sub) = tags.of(limit.key);
            let (key, rule, window) = match &limit.kind {
                LimitKind::Rate(gcra) => (
                    keys::rate(tag, request.policy, &plan.name, &limit.name, sub),
                    Rule::Rate {
                        interval_us: gcra.interval_us,
                        burst: gcra.burst,
                    },
                    None,
                ),
                LimitKind::Quota(calendar) => {
                    let window = calendar.window_at(request.now_us)?;
                    (
                        keys::quota(
                            tag,
                            request.policy,
                            &plan.name,
                            &limit.name,
                            window.id(),
                            sub,
                        ),
                        Rule::Quota {
                            limit: calendar.requests,
                            window_end_us: window.end_us,
                            expire_at_us: window.end_us + QUOTA_KEY_GRACE_US,
                        },
                        Some(window),
                    )
                }
            };
            let g = group_index(&mut built, tag);
            let group = &mut built.admission.groups[g];
            if group.limits.capacity() == 0 {
                group.limits.reserve(plan.limits.len());
            }
            group.limits.push(LimitOp {
                key,
                cost: request.cost,
                rule,
                lease: None,
            });
            built.limits[g].push(Counted { limit, window });
        }
    }

    if let Some(app_tag) = tags.app() {
        let (day, day_end_s) = utc_day(request.now_us)?;
        let retention = request.retention;
        let usage = &mut built.admission.groups[primary_index].usage;
        usage.reserve(2);
        usage.push(UsageOp {
            key: keys::usage_app(app_tag, &day),
            cost: request.cost,
            expire_at_s: day_end_s + u64::from(retention.app_days) * 86_400,
        });
        if let Some(user) = tags.user_digest.as_deref()
            && retention.user_days > 0
        {
            usage.push(UsageOp {
                key: keys::usage_user(app_tag, &day, user),
                cost: request.cost,
                expire_at_s: day_end_s + u64::from(retention.user_days) * 86_400,
            });
        }
    }

    // Drop a primary group left empty (an anonymous request whose only
    // limits live under other tags).
    let group = &built.admission.groups[primary_index];
    if group.nonces.is_empty() && group.limits.is_empty() && group.usage.is_empty() {
        built.admission.groups.remove(primary_index);
        built.limits.remove(primary_index);
        built.nonces.remove(primary_index);
    }
    Ok(built)
}

/// Longest a nonce is remembered (a year): the acceptance windows that set
/// it are bounded far lower at compile time; this only keeps the
/// arithmetic of every store in range whatever a caller passes.
const MAX_NONCE_TTL_MS: u64 = 366 * 86_400_000;

/// A random id for one admission, stored as the value of its nonces, so a
/// store call that a client library retries after a lost reply finds its
/// own nonces and is not mistaken for a replay (`docs/store.md`).
fn attempt_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn group_index(built: &mut Built<'_>, tag: &str) -> usize {
    if let Some(i) = built.admission.groups.iter().position(|g| g.tag == tag) {
        return i;
    }
    built.admission.groups.push(Group {
        tag: tag.to_owned(),
        ..Group::default()
    });
    built.limits.push(Vec::new());
    built.nonces.push(Vec::new());
    built.admission.groups.len() - 1
}

/// The latest day [`utc_day`] writes: `YYYY` has four digits.
const LAST_DAY: i64 = 2_932_896; // 9999-12-31 as days since 1970-01-01

/// The UTC day (`YYYY-MM-DD`) of `now_us` and the Unix second it ends at.
/// Plain arithmetic on whole days (a UTC day is always 86,400 s: Unix time
/// has no leap seconds), so no calendar library runs per request.
pub fn utc_day(now_us: u64) -> Result<(String, u64), String> {
    let days = now_us / 86_400_000_000;
    let days_i = i64::try_from(days).unwrap_or(i64::MAX);
    if days_i > LAST_DAY {
        return Err(format!("{now_us} µs is after the year 9999"));
    }
    let (year, month, day) = civil_from_days(days_i);
    let mut text = String::with_capacity(10);
    for (value, width) in [(year, 4), (month, 2), (day, 2)] {
        if !text.is_empty() {
            text.push('-');
        }
        let mut divisor = 10i64.pow(width - 1);
        while divisor > 0 {
            text.push(char::from(b'0' + ((value / divisor) % 10) as u8));
            divisor /= 10;
        }
    }
    Ok((text, (days + 1) * 86_400))
}

/// (year, month 1–12, day 1–31) of a day counted from 1970-01-01, in the
/// proleptic Gregorian calendar. Counts in 400-year eras (146,097 days,
/// which repeat exactly) of years that start on 1 March, so the leap day
/// is the last day of its year and month lengths follow a fixed pattern.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // 0000-03-01 is 719,468 days before 1970-01-01.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097); // 0..=146_096
    // Years of 365 days, less the leap days every 4 years, plus the ones
    // skipped every 100 years, less the one kept every 400.
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0..=365, from 1 March
    // Months from March: 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, (28|29),
    // which (153 × m + 2) / 5 reproduces.
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

/// A `Duration` since the epoch as µs (for callers holding a clock reading).
pub fn now_us(now: Duration) -> u64 {
    micros(now)
}
