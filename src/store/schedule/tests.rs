use super::*;

/// A watch polled once, RUNNING.
fn watch(wid: i64) -> WatchRecord {
    WatchRecord {
        state: Some("RUNNING".into()),
        poll_count: 1,
        ..WatchRecord::sample(wid)
    }
}

#[test]
fn claims_take_the_earliest_due_watches_once() {
    let mut s = Schedule::default();
    for (wid, next) in [(1, 300), (2, 100), (3, 200), (4, 5_000)] {
        s.add(wid, Kind::COPY, next, None);
    }
    assert_eq!(s.claim(None, 1_000, 2, 9_000), vec![2, 3]);
    assert_eq!(s.claim(None, 1_000, 10, 9_000), vec![1]);
    assert_eq!(s.claim(None, 1_000, 10, 9_000), Vec::<i64>::new());
    assert_eq!(s.next_due(None), Some(5_000));
    assert_eq!(s.len(), 4);
    assert_eq!(s.overdue(1_000), 0, "claimed watches are not overdue");
}

/// What `s` shows of watch `wid` when the file holds `file`.
fn shown(s: &Schedule, file: &WatchRecord) -> WatchRecord {
    let mut w = file.clone();
    s.overlay(&mut w);
    w
}

#[test]
fn a_running_watch_s_results_stay_here_and_reschedule() {
    let mut s = Schedule::default();
    s.add(1, Kind::COPY, 0, None);
    let file = watch(1);
    assert_eq!(s.claim(None, 10, 1, 1_000), vec![1]);
    s.claimed(1, Some(&file));
    let mut next = file.clone();
    next.poll_count = 2;
    next.last_poll_at = Some(10);
    next.next_poll_at = Some(2_010);
    assert!(s.holds(&next));
    assert!(s.note(&next));
    assert_eq!(s.unwritten(1).map(|u| u.book.poll_count), Some(2));
    assert!(s.unwritten(1).is_some_and(|u| u.held.is_none()));
    assert_eq!(s.held(), 0, "only bookkeeping changed");
    assert_eq!(s.next_due(None), Some(2_010));
    assert!(
        !s.note(&next),
        "a second result without a claim does not apply"
    );

    // A state change is held too, laid over the file, and counted.
    assert_eq!(s.claim(None, 3_000, 1, 9_000), vec![1]);
    s.claimed(1, Some(&shown(&s, &file)));
    let mut changed = next.clone();
    changed.state = Some("SUCCESS-ish".into());
    changed.upstream.started = Some("t1".into());
    changed.poll_count = 3;
    assert!(s.holds(&changed));
    assert!(s.note(&changed));
    assert_eq!(s.held(), 1);
    let now = shown(&s, &file);
    assert_eq!(now.state.as_deref(), Some("SUCCESS-ish"));
    assert_eq!(now.upstream.started.as_deref(), Some("t1"));
    assert_eq!(now.poll_count, 3);
    let states: Vec<_> = s.held_states().collect();
    assert_eq!(
        states,
        vec![(&Some("RUNNING".into()), &Some("SUCCESS-ish".into()))]
    );

    // A later result that changes nothing keeps what was held; one that changes
    // the state again still knows the file's.
    assert_eq!(s.claim(None, 9_000, 1, 19_000), vec![1]);
    s.claimed(1, Some(&shown(&s, &file)));
    let mut same = shown(&s, &file);
    same.poll_count = 4;
    assert!(s.note(&same));
    assert_eq!(shown(&s, &file).state.as_deref(), Some("SUCCESS-ish"));
    assert_eq!(s.held(), 1);
    assert_eq!(s.claim(None, 19_000, 1, 29_000), vec![1]);
    s.claimed(1, Some(&shown(&s, &file)));
    let mut again = same.clone();
    again.state = Some("PAUSED".into());
    assert!(s.note(&again));
    let states: Vec<_> = s.held_states().collect();
    assert_eq!(
        states,
        vec![(&Some("RUNNING".into()), &Some("PAUSED".into()))]
    );

    // An outcome is not held; once written, nothing is left here.
    assert_eq!(s.claim(None, 29_000, 1, 39_000), vec![1]);
    let mut ended = again.clone();
    ended.outcome = Some(crate::model::Outcome::Succeeded);
    assert!(!s.holds(&ended), "an outcome is written");
    s.written(1, None);
    assert!(s.unwritten(1).is_none());
    assert_eq!(s.held(), 0);
    assert_eq!(s.len(), 0);
    assert_eq!(s.next_due(None), None);
}

#[test]
fn an_ended_or_reposted_watch_ignores_a_late_result() {
    let mut s = Schedule::default();
    s.add(1, Kind::COPY, 0, None);
    let w = watch(1);
    s.claim(None, 10, 1, 1_000);
    s.claimed(1, Some(&w));
    s.remove(1); // cancelled while its poll was in flight
    assert!(!s.note(&w));
    assert_eq!(s.len(), 0);

    s.add(2, Kind::COPY, 0, None);
    s.claim(None, 10, 1, 1_000);
    s.claimed(2, Some(&watch(2)));
    s.add(2, Kind::COPY, 500, None); // posted again: a new generation
    assert!(!s.note(&watch(2)));
    assert_eq!(s.next_due(None), Some(500));
}

#[test]
fn a_lease_that_runs_out_makes_the_watch_due_again() {
    let mut s = Schedule::default();
    s.add(1, Kind::COPY, 0, None);
    assert_eq!(s.claim(None, 10, 1, 100), vec![1]);
    assert_eq!(s.claim(None, 50, 1, 200), Vec::<i64>::new());
    assert_eq!(s.claim(None, 100, 1, 200), vec![1]);
}

#[test]
fn unwritten_results_survive_a_failed_write_unless_replaced() {
    let mut s = Schedule::default();
    for wid in [1, 2, 3] {
        s.add(wid, Kind::COPY, 0, None);
    }
    s.claim(None, 10, 3, 1_000);
    for wid in [1, 2, 3] {
        s.claimed(wid, Some(&watch(wid)));
        let mut w = watch(wid);
        w.poll_count = 5;
        w.state = Some("PENDING".into());
        assert!(s.note(&w));
    }
    assert_eq!(s.held(), 3);
    let wids = s.unwritten_wids(true);
    assert_eq!(wids, vec![1, 2, 3]);
    let taken = s.take_unwritten(&wids);
    assert_eq!(taken.len(), 3);
    assert!(s.unwritten(1).is_none());
    assert_eq!(s.held(), 0);
    // Meanwhile watch 1 was polled again (no change), and watch 2 ended.
    s.claim(None, 10, 1, 1_000);
    let mut w1 = watch(1);
    w1.state = Some("PENDING".into());
    s.claimed(1, Some(&w1));
    w1.poll_count = 6;
    s.note(&w1);
    s.remove(2);
    s.restore_unwritten(taken);
    let u1 = s.unwritten(1).expect("watch 1 still has results to write");
    assert_eq!(u1.book.poll_count, 6, "the newer bookkeeping");
    assert!(u1.held.is_some(), "the state that was not written");
    assert!(s.unwritten(2).is_none());
    assert!(s.unwritten(3).is_some_and(|u| u.held.is_some()));
    assert_eq!(s.held(), 2);
    assert_eq!(s.unwritten_wids(false), vec![1, 3]);
}

#[test]
fn deadlines_are_known_until_the_watch_ends() {
    let mut s = Schedule::default();
    s.add(1, Kind::COPY, 0, Some(9_000));
    s.add(2, Kind::COPY, 0, None);
    s.add(3, Kind::COPY, 0, Some(5_000));
    assert_eq!(s.first_deadline(), Some(5_000));
    s.claim(None, 10, 3, 1_000);
    assert_eq!(
        s.first_deadline(),
        Some(5_000),
        "a claimed watch keeps its deadline"
    );
    s.remove(3);
    assert_eq!(s.first_deadline(), Some(9_000));
    s.add(1, Kind::COPY, 0, None); // posted again without a deadline
    assert_eq!(s.first_deadline(), None);
}

#[test]
fn a_moved_poll_moves_unless_claimed() {
    let mut s = Schedule::default();
    s.add(1, Kind::COPY, 0, None);
    s.add(2, Kind::COPY, 0, None);
    assert_eq!(s.claim(None, 10, 1, 1_000), vec![1]);
    s.due_at(1, 500); // claimed: its result decides
    s.due_at(2, 700);
    s.due_at(3, 100); // not running: nothing to move
    assert_eq!(s.next_due(None), Some(700));
    assert_eq!(s.len(), 2);
    assert_eq!(s.claim(None, 700, 10, 9_000), vec![2]);
}

#[test]
fn a_claim_for_some_kinds_takes_only_theirs_earliest_first() {
    let (a, b) = (Kind::intern("lane-a"), Kind::intern("lane-b"));
    let mut s = Schedule::default();
    s.add(1, a, 300, None);
    s.add(2, b, 100, None);
    s.add(3, Kind::COPY, 50, None);
    s.add(4, a, 200, None);
    assert_eq!(s.next_due(Some(&[a])), Some(200));
    assert_eq!(s.claim(Some(&[a]), 1_000, 10, 2_000), vec![4, 1]);
    assert_eq!(s.claim(Some(&[a, b]), 1_000, 10, 3_000), vec![2]);
    assert_eq!(s.next_due(Some(&[a, b])), None);
    // An expired lease is due again in its own lane only.
    assert_eq!(s.claim(Some(&[b]), 2_000, 10, 9_000), Vec::<i64>::new());
    assert_eq!(s.claim(Some(&[a]), 2_000, 10, 9_000), vec![1, 4]);
    assert_eq!(s.claim(None, 2_000, 10, 9_000), vec![3]);
    s.unclaim(1, 2_500);
    assert_eq!(s.next_due(Some(&[a])), Some(2_500));
    assert_eq!(s.next_due(Some(&[b])), None);
}

#[test]
fn overdue_counts_unclaimed_watches_due_before_a_time() {
    let mut s = Schedule::default();
    for wid in 0..10 {
        s.add(wid, Kind::COPY, wid * 100, None);
    }
    assert_eq!(s.overdue(450), 5);
    assert_eq!(s.overdue(0), 0);
}
