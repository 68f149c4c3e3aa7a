//! The lease arithmetic against what a user relies on: across replicas
//! (with skewed clocks, leases used late, returned or lost in a crash) a
//! rate never admits more than GCRA allows single requests in any window,
//! a quota never more than its limit, and what is returned is exactly what
//! was not used.

use proptest::prelude::*;

use super::*;

const MS: u64 = 1_000;

/// One replica's lease, as the lease layer keeps it.
#[derive(Clone, Debug)]
struct Held {
    granted: u64,
    used: u64,
    top: u64,
    base: u64,
    /// True time after which the replica stops using it (its monotonic
    /// deadline).
    deadline: u64,
}

/// What a replica does at one step.
#[derive(Clone, Debug)]
enum Step {
    /// Time passes (µs, true time).
    Wait(u64),
    /// Replica `r` gets a request of `cost`, wanting slices of `want`.
    Request {
        replica: usize,
        cost: u64,
        want: u64,
    },
    /// Replica `r` returns its lease (expired or evicted).
    Return(usize),
    /// Replica `r` dies: its lease is never returned.
    Crash(usize),
}

fn steps(replicas: usize, max_wait: u64) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        1 => (0..max_wait).prop_map(Step::Wait),
        12 => (0..replicas, 1..3u64, 1..40u64)
            .prop_map(|(replica, cost, want)| Step::Request { replica, cost, want }),
        1 => (0..replicas).prop_map(Step::Return),
        1 => (0..replicas).prop_map(Step::Crash),
    ];
    proptest::collection::vec(step, 1..400)
}

/// GCRA's own bound, loosened by the replicas' clock skew: every window
/// `[a, b]` holds at most `(b − a + burst × T + slack) / T` units
/// (`docs/store.md`, "Quota leases"). With clocks `spread` apart the slack
/// is `2 × spread`, as for single requests without leases: the TAT is read
/// against a clock up to `spread` off, and its key expires (PX, relative
/// to the writer's clock) up to `spread` early.
fn assert_gcra_bound(uses: &mut [(u64, u64)], interval: u64, burst: u64, slack: u64) {
    uses.sort_unstable();
    let capacity = burst * interval;
    for i in 0..uses.len() {
        let mut units = 0;
        for j in i..uses.len() {
            units += uses[j].1;
            let window = uses[j].0 - uses[i].0;
            assert!(
                units * interval <= window + capacity + slack,
                "{units} units in {window} µs exceed {burst} per {capacity} µs (+{slack} µs \
                 of skew): {uses:?}"
            );
        }
    }
}

/// Several replicas lease one rate with clocks `skews` off true time:
/// whatever they do, the units admitted (leased or single) obey GCRA.
fn run_rate(
    skews: &[i64],
    (interval, burst, lease): (u64, u64, u64),
    plan: &[Step],
    single_requests: bool,
) -> Vec<(u64, u64)> {
    let start: u64 = 1_700_000_000_000_000;
    let mut now = start;
    // The stored TAT and the true time its key expires (PX is relative to
    // the writer's clock).
    let mut key: Option<(u64, u64)> = None;
    let mut held: Vec<Option<Held>> = vec![None; skews.len()];
    let mut uses = Vec::new();
    let wall = |replica: usize, now: u64| now.saturating_add_signed(skews[replica]);
    for step in plan {
        if key.is_some_and(|(_, expires)| expires <= now) {
            key = None;
        }
        let stored = key.map(|(tat, _)| tat);
        // A write by a replica reading `w`: the key lives `tat − w`.
        let write = |tat: Option<u64>, w: u64| tat.map(|tat| (tat, now + tat.saturating_sub(w)));
        match *step {
            Step::Wait(us) => now += us,
            Step::Request {
                replica,
                cost,
                want,
            } => {
                let w = wall(replica, now);
                if let Some(h) = held[replica].as_mut()
                    && now <= h.deadline
                    && h.granted - h.used >= cost
                {
                    h.used += cost;
                    uses.push((now, cost));
                    continue;
                }
                if single_requests && replica == 0 {
                    let v = gcra::check(stored, w, cost, interval, burst);
                    if v.allowed {
                        key = write(Some(v.new_tat), w);
                        uses.push((now, cost));
                    }
                    continue;
                }
                // An expired or spent lease is returned with the grant
                // (the lease layer sends both in one call).
                let mut stored = stored;
                if let Some(h) = held[replica].take()
                    && let Some(tat) = return_rate(stored, (h.top, h.base, h.used), interval, w)
                {
                    stored = tat;
                    key = write(tat, w);
                }
                let g = grant_rate(stored, w, cost, want, (interval, burst), w + lease);
                if g.allowed {
                    key = write(Some(g.top), w);
                    uses.push((now, cost));
                    held[replica] = Some(Held {
                        granted: g.granted,
                        used: cost,
                        top: g.top,
                        base: g.base,
                        deadline: now + lease,
                    });
                }
            }
            Step::Return(replica) => {
                let w = wall(replica, now);
                if let Some(h) = held[replica].take()
                    && let Some(tat) = return_rate(stored, (h.top, h.base, h.used), interval, w)
                {
                    key = write(tat, w);
                }
            }
            Step::Crash(replica) => held[replica] = None,
        }
    }
    uses
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Rates: leases taken and used late, returned or lost, mixed with
    /// single requests, on replicas whose clocks differ by up to 3 ms —
    /// no window ever holds more than GCRA allows (plus the skew).
    #[test]
    fn rates_never_exceed_the_gcra_bound(
        skews in proptest::collection::vec(-1_500i64..1_500, 1..4),
        burst in 1..60u64,
        interval_ms in 1..20u64,
        plan in steps(3, 30 * MS),
        singles in any::<bool>(),
    ) {
        let interval = interval_ms * MS;
        let lease = (burst * interval / RATE_LEASE_SHARE).max(1);
        let replicas = skews.len();
        let plan: Vec<Step> = plan.into_iter().map(|s| match s {
            Step::Request { replica, cost, want } => Step::Request {
                replica: replica % replicas, cost: cost.min(burst), want,
            },
            Step::Return(r) => Step::Return(r % replicas),
            Step::Crash(r) => Step::Crash(r % replicas),
            wait => wait,
        }).collect();
        let mut uses = run_rate(&skews, (interval, burst, lease), &plan, singles);
        let spread = skews.iter().max().unwrap().abs_diff(*skews.iter().min().unwrap());
        assert_gcra_bound(&mut uses, interval, burst, 2 * spread);
    }

    /// Quotas: whatever replicas lease, use, return or lose, admissions
    /// never exceed the limit; the counter equals what was admitted plus
    /// what crashed replicas held; and a request is refused only when
    /// what was admitted plus what others hold leaves less than its cost.
    #[test]
    fn quotas_never_exceed_and_refuse_only_what_others_hold(
        limit in 1..300u64,
        plan in steps(4, 1),
    ) {
        let mut count = 0u64;
        let mut admitted = 0u64;
        let mut lost = 0u64;
        let mut held: Vec<Option<(u64, u64)>> = vec![None; 4];
        for step in &plan {
            match *step {
                Step::Wait(_) => {}
                Step::Request { replica, cost, want } => {
                    if let Some((granted, used)) = held[replica].as_mut()
                        && *granted - *used >= cost
                    {
                        *used += cost;
                        admitted += cost;
                        continue;
                    }
                    if let Some((granted, used)) = held[replica].take() {
                        count -= granted - used;
                    }
                    let g = grant_quota(count, limit, cost, want, 1);
                    if g.allowed {
                        prop_assert_eq!(g.base, count);
                        count = g.top;
                        admitted += cost;
                        held[replica] = Some((g.granted, cost));
                    } else {
                        let others: u64 = held.iter().flatten().map(|(g, u)| g - u).sum();
                        prop_assert!(
                            admitted + others + lost + cost > limit,
                            "refused with {} admitted, {} held, {} lost, cost {}",
                            admitted, others, lost, cost
                        );
                    }
                }
                Step::Return(replica) => {
                    if let Some((granted, used)) = held[replica].take() {
                        count -= granted - used;
                    }
                }
                Step::Crash(replica) => {
                    if let Some((granted, used)) = held[replica].take() {
                        lost += granted - used;
                    }
                }
            }
            prop_assert!(admitted <= limit, "{admitted} admitted of {limit}");
            let outstanding: u64 = held.iter().flatten().map(|(g, u)| g - u).sum();
            prop_assert_eq!(count, admitted + outstanding + lost);
        }
    }

    /// A slice holds the request's cost, never more than asked for, and
    /// never more than an eighth of what is left (unless that is below the
    /// cost: then exactly the cost).
    #[test]
    fn slices_shrink_to_single_requests_near_the_limit(
        want in 0..10_000u64,
        cost in 1..10u64,
        extra in 0..100_000u64,
    ) {
        let available = cost + extra;
        let s = slice(want, cost, available);
        prop_assert!(s >= cost && s <= available);
        prop_assert!(s <= want.max(cost));
        prop_assert!(s <= (available / SLICE_SHARE).max(cost));
        if available < SLICE_SHARE * cost {
            prop_assert_eq!(s, cost);
        }
    }
}

#[test]
fn a_rate_grant_charges_the_slice_at_the_lease_end() {
    // 10 per second, burst 10: T = 100 ms.
    let (interval, burst) = (100 * MS, 10);
    let now = 1_000_000 * MS;
    let g = grant_rate(None, now, 1, 5, (interval, burst), now + 125 * MS);
    assert!(g.allowed);
    // At most 1/8 of the 10 available: the request's own unit.
    assert_eq!(g.granted, 1);
    assert_eq!(g.top, now + 125 * MS + 100 * MS);
    // A bigger burst leaves room for a real slice.
    let g = grant_rate(None, now, 1, 50, (interval, 100), now + 125 * MS);
    assert_eq!(g.granted, 12);
    assert_eq!(g.base, 0);
    assert_eq!(g.top, now + 125 * MS + 12 * interval);
    assert_eq!(g.remaining, 99, "as a single request sees it");
}

/// The case the charge at the lease's end exists for: replica A takes a
/// slice and uses most of it just before its lease ends, when replica B
/// arrives to an otherwise idle bucket. Charged at the grant instead, the
/// bucket would have refilled under A's unused units and B's burst plus
/// A's late units would exceed the burst.
#[test]
fn a_slice_used_late_and_a_fresh_burst_stay_within_the_burst() {
    // 100 per second, burst 80: T = 10 ms, burst × T = 800 ms; leases of
    // 100 ms.
    let (interval, burst) = (10 * MS, 80);
    let lease = rate_lease_us(interval, burst, 1_000 * MS).unwrap();
    assert_eq!(lease, 100 * MS);
    let t0 = 1_000_000 * MS;
    let a = grant_rate(None, t0, 1, 10, (interval, burst), t0 + lease);
    assert_eq!(a.granted, 10);
    // A's other nine units, used at t0 + 99 ms, and B's singles then.
    let late = t0 + 99 * MS;
    let mut stored = Some(a.top);
    let mut b = 0;
    while let v = gcra::check(stored, late, 1, interval, burst)
        && v.allowed
    {
        stored = Some(v.new_tat);
        b += 1;
    }
    let mut uses = vec![(t0, 1), (late, 9)];
    uses.extend((0..b).map(|_| (late, 1)));
    assert_gcra_bound(&mut uses, interval, burst, 0);
    // The burst less A's ten units and the 1 ms left of A's lease (charged
    // at its end): 80 − 10 − 0.1, rounded down. Charged at the grant, B
    // would have found 79 and, with A's nine, used 88 of a burst of 80.
    assert_eq!(b, 69);
}

#[test]
fn a_rate_returns_only_when_nothing_was_charged_on_top() {
    let interval = 10 * MS;
    let now = 1_000_000 * MS;
    let g = grant_rate(None, now, 1, 40, (interval, 100), now + 50 * MS);
    assert_eq!(g.granted, 12);
    // Returned 20 ms later with 3 used: charged as a lease of 3 ending now.
    let later = now + 20 * MS;
    assert_eq!(
        return_rate(Some(g.top), (g.top, g.base, 3), interval, later),
        Some(Some(later + 3 * interval))
    );
    // Nothing used and nothing before: the key goes.
    assert_eq!(
        return_rate(Some(g.top), (g.top, g.base, 0), interval, later),
        Some(None)
    );
    // Another grant charged on top: the units stay.
    assert_eq!(
        return_rate(Some(g.top + interval), (g.top, g.base, 3), interval, later),
        None
    );
}

#[test]
fn lease_lengths() {
    // 1,000,000 per second, burst 1,000,000: an eighth of a second.
    assert_eq!(rate_lease_us(1, 1_000_000, 1_000_000), Some(125_000));
    // 10 per second, burst 5: 62.5 ms.
    assert_eq!(rate_lease_us(100_000, 5, 1_000_000), Some(62_500));
    // 100 per second, burst 5: 6.25 ms, too short to lease.
    assert_eq!(rate_lease_us(10_000, 5, 1_000_000), None);
    // A quota lease ends with its window.
    assert_eq!(
        quota_lease_us(5_000_000, 4_600_000, 1_000_000),
        Some(400_000)
    );
    assert_eq!(quota_lease_us(5_000_000, 4_995_000, 1_000_000), None);
}
