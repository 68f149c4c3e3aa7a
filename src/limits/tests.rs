//! Plan compilation: every error names its field.

use super::*;
use crate::policy::types::ApiPolicySpec;

fn spec(yaml: &str) -> ApiPolicySpec {
    serde_json::from_value(serde_saphyr::from_str::<serde_json::Value>(yaml).unwrap()).unwrap()
}

#[test]
fn compiles_rates_quotas_and_default_plan() {
    let plans = Plans::compile(&spec(
        r#"
defaultPlan: free
plans:
  - name: free
    limits:
      - { name: per-second, key: app, rate: { requests: 10, period: 1s, burst: 20 } }
      - { name: daily, key: app, quota: { requests: 10000, reset: day } }
  - name: gold
    limits:
      - { name: monthly, key: app, quota: { requests: 5000000, reset: month, timeZone: Europe/Berlin } }
"#,
    ))
    .unwrap();
    assert_eq!(plans.default_plan().unwrap().name, "free");
    assert_eq!(plans.resolve(Some("gold")).unwrap().name, "gold");
    assert_eq!(plans.resolve(Some("nope")).unwrap().name, "free");
    assert_eq!(plans.resolve(None).unwrap().name, "free");
    let free = plans.get("free").unwrap();
    assert_eq!(free.limits[0].capacity(), 20);
    assert!(
        plans
            .check_app_plan("platinum")
            .unwrap_err()
            .contains("platinum")
    );
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            "plans: [{name: a, limits: [{name: x, rate: {requests: 1, period: 1s, burst: 0}}]}]",
            "plans[0].limits[0].rate.burst",
        ),
        (
            "defaultPlan: gold\nplans: [{name: free}]",
            "defaultPlan: unknown plan \"gold\"",
        ),
        (
            "plans: [{name: a}, {name: b, limits: [{name: x, rate: {requests: 10, period: 1s, burst: 5}}]}]\nroutes: [{name: s, cost: 6}]",
            "routes[0].cost: 6 exceeds the burst 5 of plans[1].limits[0]",
        ),
        (
            "plans: [{name: a, limits: [{name: x, quota: {requests: 5, reset: day, timeZone: Nowhere/City}}]}]",
            "plans[0].limits[0].quota.timeZone",
        ),
        ("plans: [{name: 'a:b'}]", "plans[0].name"),
        (
            "plans: [{name: a, limits: [{name: x}]}]",
            "plans[0].limits[0]: set one of rate and quota",
        ),
        ("plans: [{name: a}, {name: a}]", "plans[1].name"),
    ];
    for (yaml, expected) in cases {
        let err = Plans::compile(&spec(yaml)).unwrap_err();
        assert!(
            err.contains(expected),
            "{yaml}\n→ {err}\nexpected {expected}"
        );
    }
}

#[test]
fn ipv6_clients_count_by_their_prefix() {
    use super::admission::Ipv6Prefix;
    let p = Ipv6Prefix::default();
    assert_eq!(p.bits(), 64);
    let net = |ip: &str| p.network_of(ip.parse().unwrap()).to_string();
    assert_eq!(net("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
    assert_eq!(net("2001:db8:1:2::ffff"), "2001:db8:1:2::");
    assert_eq!(net("2001:db8:1:3::1"), "2001:db8:1:3::");
    assert_eq!(net("192.0.2.7"), "192.0.2.7");
    let exact = Ipv6Prefix::new(128).unwrap();
    assert_eq!(
        exact.network_of("2001:db8::1".parse().unwrap()).to_string(),
        "2001:db8::1"
    );
    let wide = Ipv6Prefix::new(32).unwrap();
    assert_eq!(
        wide.network_of("2001:db8:ffff::1".parse().unwrap())
            .to_string(),
        "2001:db8::"
    );
    for bad in [0, 31, 129, 255] {
        assert!(Ipv6Prefix::new(bad).is_err(), "{bad}");
    }
}

#[test]
fn route_cost_within_burst_compiles() {
    let yaml = "plans: [{name: a, limits: [{name: x, rate: {requests: 10, period: 1s, burst: 5}}]}]\nroutes: [{name: s, cost: 5}]";
    assert!(Plans::compile(&spec(yaml)).is_ok());
}

mod admission_keys {
    //! `admission::build` writes keys piece by piece into one buffer; these
    //! tests hold it to the key layout of `store::keys`, written out here
    //! with `format!` the plain way, for every kind of subject.

    use super::*;
    use crate::limits::admission::{self, Request, Subject, utc_day};
    use crate::store::{Retention, Rule, keys};
    use jiff::Timestamp;
    use jiff::tz::TimeZone;

    const PLANS: &str = r#"
defaultPlan: p
plans:
  - name: p
    limits:
      - { name: app-rate, key: app, rate: { requests: 10, period: 1s } }
      - { name: app-day, key: app, quota: { requests: 100, reset: day, timeZone: Europe/Berlin } }
      - { name: au, key: app-user, rate: { requests: 5, period: 1s } }
      - { name: dev, key: device, quota: { requests: 50, reset: month } }
      - { name: usr, key: user, rate: { requests: 20, period: 1m } }
      - { name: addr, key: ip, quota: { requests: 1000, reset: hour } }
"#;

    /// The key each limit of `PLANS` should get, built the plain way.
    fn expected_keys(policy: &str, s: &Subject<'_>, now_us: u64, plans: &Plans) -> Vec<String> {
        let esc = keys::escape;
        let user_digest = s.user.map(|(i, u)| keys::user_digest(i, u));
        let ip_digest = s.ip.map(keys::ip_digest);
        let app_tag = s.app.map(|a| format!("{{a:{}}}", esc(a)));
        let user_tag = user_digest.as_ref().map(|d| format!("{{u:{d}}}"));
        let ip_tag = ip_digest.as_ref().map(|d| format!("{{i:{d}}}"));
        let anon = "{anon}".to_owned();
        let primary = app_tag
            .clone()
            .or(user_tag.clone())
            .or(ip_tag.clone())
            .unwrap_or(anon.clone());
        let ip_sub = ip_digest.as_ref().map(|d| format!("i:{d}"));
        let plan = plans.get("p").unwrap();
        plan.limits
            .iter()
            .map(|limit| {
                let (tag, sub) = match limit.key {
                    LimitKey::App => (app_tag.clone().unwrap_or(primary.clone()), None),
                    LimitKey::AppUser => match (&app_tag, &user_digest) {
                        (Some(t), Some(u)) => (t.clone(), Some(format!("u:{u}"))),
                        (Some(t), None) => (t.clone(), ip_sub.clone()),
                        (None, _) => (primary.clone(), None),
                    },
                    LimitKey::Device => match (&app_tag, s.device) {
                        (Some(t), Some(d)) => {
                            (t.clone(), Some(format!("d:{}", keys::device_digest(d))))
                        }
                        (Some(t), None) => (t.clone(), ip_sub.clone()),
                        (None, _) => (primary.clone(), None),
                    },
                    LimitKey::User => (
                        user_tag.clone().or(ip_tag.clone()).unwrap_or(anon.clone()),
                        None,
                    ),
                    LimitKey::Ip => (ip_tag.clone().unwrap_or(anon.clone()), None),
                };
                let base = match &limit.kind {
                    LimitKind::Rate(_) => format!(
                        "tg:{tag}:r:{}:{}:{}",
                        esc(policy),
                        esc(&plan.name),
                        esc(&limit.name)
                    ),
                    LimitKind::Quota(c) => format!(
                        "tg:{tag}:q:{}:{}:{}:{}",
                        esc(policy),
                        esc(&plan.name),
                        esc(&limit.name),
                        c.window_at(now_us).unwrap().id()
                    ),
                };
                match sub {
                    Some(sub) => format!("{base}:{sub}"),
                    None => base,
                }
            })
            .collect()
    }

    #[test]
    fn keys_match_the_documented_layout_for_every_subject() {
        let plans = Plans::compile(&spec(PLANS)).unwrap();
        let now_us = 1_711_846_800_000_000; // 2024-03-31T01:00:00Z, Berlin's DST day
        let ip = "2001:db8::7".parse().unwrap();
        let subjects = [
            Subject {
                app: Some("my app/ü:{x}"),
                user: Some(("https://id.example/", "alice")),
                user_digest: None,
                device: Some("dev-1"),
                ip: Some(ip),
            },
            Subject {
                app: Some("app"),
                user: None,
                user_digest: None,
                device: None,
                ip: Some(ip),
            },
            Subject {
                app: None,
                user: Some(("https://id.example/", "bob")),
                user_digest: None,
                device: Some("dev-2"),
                ip: Some(ip),
            },
            Subject {
                app: None,
                user: None,
                user_digest: None,
                device: None,
                ip: Some(ip),
            },
            Subject::default(),
        ];
        for (policy, subject) in [
            ("ns/policy", 0),
            ("weird ns/p%1", 1),
            ("a/b", 2),
            ("a/b", 3),
            ("a/b", 4),
        ]
        .map(|(p, i)| (p, subjects[i]))
        {
            let built = admission::build(&Request {
                policy,
                plan: plans.get("p"),
                subject,
                cost: 2,
                nonces: &[],
                now_us,
                retention: Retention::default(),
                leasing: crate::store::Leasing::Off,
            })
            .unwrap();
            let mut got: Vec<String> = built
                .admission
                .groups
                .iter()
                .flat_map(|g| g.limits.iter().map(|l| l.key.clone()))
                .collect();
            let mut expected = expected_keys(policy, &subject, now_us, &plans);
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "{subject:?}");
            // Every key of a group carries the group's tag; no group is empty.
            for g in &built.admission.groups {
                assert!(!(g.limits.is_empty() && g.usage.is_empty() && g.nonces.is_empty()));
                for key in g
                    .limits
                    .iter()
                    .map(|l| &l.key)
                    .chain(g.usage.iter().map(|u| &u.key))
                {
                    assert!(
                        key.starts_with(&format!("tg:{}:", g.tag)),
                        "{key} in {}",
                        g.tag
                    );
                }
                for limit in &g.limits {
                    if let Rule::Quota {
                        expire_at_us,
                        window_end_us,
                        ..
                    } = limit.rule
                    {
                        assert_eq!(
                            expire_at_us,
                            window_end_us + crate::store::QUOTA_KEY_GRACE_US
                        );
                    }
                }
            }
            // Usage: per app, and per app-user when a user is known.
            let usage: Vec<&str> = built
                .admission
                .groups
                .iter()
                .flat_map(|g| g.usage.iter().map(|u| u.key.as_str()))
                .collect();
            match (subject.app, subject.user) {
                (Some(app), Some((iss, sub))) => assert_eq!(
                    usage,
                    [
                        format!("tg:{{a:{}}}:u:2024-03-31", keys::escape(app)),
                        format!(
                            "tg:{{a:{}}}:u:2024-03-31:{}",
                            keys::escape(app),
                            keys::user_digest(iss, sub)
                        ),
                    ]
                ),
                (Some(app), None) => {
                    assert_eq!(
                        usage,
                        [format!("tg:{{a:{}}}:u:2024-03-31", keys::escape(app))]
                    )
                }
                (None, _) => assert!(usage.is_empty()),
            }
        }
    }

    #[test]
    fn utc_day_matches_the_calendar() {
        // Every day from 1970 to 2100, at its first and last microsecond,
        // plus the last representable day.
        let day_us = 86_400_000_000u64;
        let check = |now_us: u64| {
            let ts = Timestamp::from_microsecond(i64::try_from(now_us).unwrap()).unwrap();
            let date = ts.to_zoned_datetime(TimeZone::UTC).date();
            let (text, end_s) = utc_day(now_us).unwrap();
            assert_eq!(text, date.to_string(), "{now_us}");
            let next = date.tomorrow().map(|d| {
                d.to_zoned_datetime(TimeZone::UTC)
                    .unwrap()
                    .timestamp()
                    .as_second()
            });
            if let Ok(next) = next {
                assert_eq!(end_s, u64::try_from(next).unwrap(), "{now_us}");
            }
        };
        for day in 0..47_847u64 {
            check(day * day_us);
            check(day * day_us + day_us - 1);
        }
        // jiff stops at 9999-12-30T22:00Z; the last day is checked by hand.
        let last = 2_932_896 * day_us;
        assert_eq!(
            utc_day(last).unwrap(),
            ("9999-12-31".into(), 253_402_300_800)
        );
        assert_eq!(utc_day(last + day_us - 1).unwrap().0, "9999-12-31");
        assert!(utc_day(last + day_us).is_err());
        assert!(utc_day(u64::MAX).is_err());
    }
}
