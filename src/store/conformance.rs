//! The contract every store implementation keeps, as one suite: `run` takes a maker of
//! fresh, empty stores (and whatever keeps them alive) and checks each promise of the
//! traits on its own store.

use std::time::Duration;

use bytes::Bytes;

use super::{
    CallbackTry, CancelError, Cancelled, Chain, Enqueued, Filter, Fired, HostId, KvError, Lease,
    NewInvocation, Next, Output, Reason, Receipt, RetryError, Slots, State, Store, SyncRecord,
    TimerFire, Wanted, now_ms,
};
use crate::config::{Overlap, TriggerKind};

pub(crate) async fn run<K, F: Future<Output = (Store, K)>>(make: impl Fn() -> F) {
    enqueued_work_is_claimed_once_and_finished(make().await).await;
    work_claimed_as_it_is_stored_runs_under_a_lease_like_a_claim(make().await).await;
    a_result_under_an_old_lease_changes_nothing(make().await).await;
    a_released_claim_gives_its_attempt_back(make().await).await;
    a_failed_attempt_waits_for_its_retry_time(make().await).await;
    only_a_dead_invocation_is_retried_with_a_fresh_round(make().await).await;
    recover_queues_running_work_again_for_the_next_attempt(make().await).await;
    claims_a_host_does_not_run_go_back_to_the_queue_after_the_lease(make().await).await;
    a_timer_occurrence_fires_once_and_overlap_decides_skip_or_queue(make().await).await;
    a_timer_run_is_not_due_nor_claimed_while_another_run_of_it_is_going(make().await).await;
    timer_cursors_move_only_forward_and_forgotten_timers_lose_theirs(make().await).await;
    a_startup_run_fires_once_within_its_window_on_any_host(make().await).await;
    a_file_event_and_its_receipt_are_stored_together(make().await).await;
    history_lists_newest_first_filtered_and_limited(make().await).await;
    a_list_filters_by_text_in_the_error_and_pages_by_cursor(make().await).await;
    stats_count_records_by_state_and_ends_per_minute(make().await).await;
    prune_deletes_only_finished_records_older_than_the_cut(make().await).await;
    a_list_shows_excerpts_and_one_record_all_it_keeps(make().await).await;
    a_silent_hosts_running_work_is_rescued_and_a_live_hosts_is_not(make().await).await;
    claims_take_the_oldest_due_first_within_the_hosts_and_each_functions_room(make().await).await;
    a_functions_concurrency_holds_across_hosts_claiming_at_once(make().await).await;
    a_higher_priority_is_claimed_first_even_when_younger(make().await).await;
    delayed_work_waits_as_scheduled_and_is_claimed_once_due(make().await).await;
    an_idempotency_key_gives_the_first_invocation_again(make().await).await;
    cancel_ends_waiting_work_at_once_and_marks_running_work_for_its_host(make().await).await;
    a_chain_is_queued_with_the_result_that_starts_it_and_only_then(make().await).await;
    a_checkpoint_outlives_its_attempt_and_only_the_current_attempt_writes(make().await).await;
    key_values_are_set_read_listed_in_order_and_deleted_per_store(make().await).await;
    increment_keeps_decimal_text_and_concurrent_increments_all_count(make().await).await;
    a_stores_key_limit_holds_and_a_refused_batch_sets_nothing(make().await).await;
    a_callback_is_due_once_its_invocation_ends_and_held_while_tried(make().await).await;
    a_paused_function_stays_paused_until_resumed(make().await).await;
    dead_invocations_are_retried_in_bulk_by_function(make().await).await;
}

/// Each function may take up to `limit` here; `concurrency` as given.
fn wanted(functions: &[(&str, Option<usize>)], limit: usize) -> Wanted {
    Wanted {
        limit,
        functions: functions
            .iter()
            .map(|(function, everywhere)| Slots {
                function: function.to_string(),
                here: limit,
                everywhere: *everywhere,
                // "t" is the timer's function in these tests.
                timers: *function == "t",
            })
            .collect(),
    }
}

/// The ids `claim_due` claimed, in its order.
async fn claim_due(store: &Store, host: &HostId, wanted: &Wanted) -> Vec<String> {
    store
        .queue
        .claim_due(host, wanted)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.lease.id)
        .collect()
}

fn owner() -> HostId {
    HostId("host-a".into())
}

fn new(id: &str, function: &str) -> NewInvocation {
    NewInvocation {
        id: id.to_string(),
        function: function.to_string(),
        trigger: TriggerKind::Manual,
        reason: Reason::Manual,
        attempts: 3,
        priority: 0,
        run_after: None,
        idempotency_key: None,
        payload: Bytes::from_static(b"payload"),
        vars: vec![("K".to_string(), "V".to_string())],
        timer: None,
        input_dir: None,
        parent_id: None,
        depth: 0,
        callback: None,
    }
}

fn failed() -> Output {
    Output {
        error: Some("exit 1".to_string()),
        exit_code: Some(1),
        stderr: Bytes::from_static(b"oops\n"),
        duration: Duration::from_millis(3),
        ..Output::default()
    }
}

fn succeeded() -> Output {
    Output {
        exit_code: Some(0),
        stdout: Bytes::from_static(b"done\n"),
        duration: Duration::from_millis(2),
        ..Output::default()
    }
}

/// Ends the attempt under `lease` succeeded, starting nothing; whether the lease was current.
async fn finish_succeeded(store: &Store, lease: &Lease) -> bool {
    store
        .queue
        .finish(lease, succeeded(), Next::Succeeded, Chain::default())
        .await
        .unwrap()
}

async fn state_of(store: &Store, id: &str) -> State {
    store
        .history
        .get(id)
        .await
        .unwrap()
        .expect("the record")
        .state
}

async fn enqueued_work_is_claimed_once_and_finished<K>((store, _keep): (Store, K)) {
    store
        .history
        .check()
        .await
        .expect("a new store is there to write to");
    store.queue.enqueue(new("a", "f")).await.unwrap();
    assert_eq!(store.queue.depth().await.unwrap(), 1);
    let claimed = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    assert_eq!(claimed.attempt, 1);
    assert_eq!(claimed.max_attempt, 3);
    assert_eq!(claimed.trigger, Ok(TriggerKind::Manual));
    assert_eq!(claimed.payload.as_ref(), b"payload");
    assert_eq!(claimed.vars, [("K".to_string(), "V".to_string())]);
    assert_eq!(claimed.lease.owner, owner());
    assert!(store.queue.claim("a", &owner()).await.unwrap().is_none());
    assert_eq!(state_of(&store, "a").await, State::Running);
    assert!(
        claim_due(&store, &owner(), &wanted(&[("f", None)], 10))
            .await
            .is_empty()
    );
    let applied = finish_succeeded(&store, &claimed.lease).await;
    assert!(applied);
    let record = store.history.get("a").await.unwrap().unwrap();
    assert_eq!(record.state, State::Succeeded);
    assert_eq!(record.stdout, "done\n");
    assert_eq!(record.exit_code, Some(0));
    assert!(record.finished_at.is_some());
    assert_eq!(record.host.as_deref(), Some("host-a"));
    assert_eq!(store.queue.depth().await.unwrap(), 0);
}

async fn work_claimed_as_it_is_stored_runs_under_a_lease_like_a_claim<K>(
    (store, _keep): (Store, K),
) {
    let (enqueued, claimed) = store
        .queue
        .enqueue_claimed(new("a", "f"), &owner())
        .await
        .unwrap();
    assert_eq!(enqueued, Enqueued::New("a".to_string()));
    let claimed = claimed.expect("due work is claimed as it is stored");
    assert_eq!((claimed.attempt, claimed.max_attempt), (1, 3));
    assert_eq!(claimed.lease.owner, owner());
    assert_eq!(claimed.trigger, Ok(TriggerKind::Manual));
    assert_eq!(claimed.payload.as_ref(), b"payload");
    let record = store.history.get("a").await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (State::Running, 1));
    assert_eq!(record.host.as_deref(), Some("host-a"));
    assert!(record.started_at.is_some());
    // Nobody else claims it, and it is not waiting.
    assert!(store.queue.claim("a", &owner()).await.unwrap().is_none());
    assert!(
        claim_due(
            &store,
            &HostId("host-b".into()),
            &wanted(&[("f", None)], 10)
        )
        .await
        .is_empty()
    );
    assert_eq!(store.queue.depth().await.unwrap(), 0);
    // Its host's crash uses up the attempt, as a claim's would; the rescued run's fence
    // is newer, so the first lease's result is dropped.
    store.queue.recover(&owner()).await.unwrap();
    let again = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    assert_eq!(again.attempt, 2);
    assert!(again.lease.fence > claimed.lease.fence);
    let late = finish_succeeded(&store, &claimed.lease).await;
    assert!(!late);
    assert!(finish_succeeded(&store, &again.lease).await);
    assert_eq!(state_of(&store, "a").await, State::Succeeded);

    // A second submission with the same idempotency key claims nothing.
    let keyed = |id: &str| NewInvocation {
        idempotency_key: Some("k".to_string()),
        ..new(id, "f")
    };
    store
        .queue
        .enqueue_claimed(keyed("k1"), &owner())
        .await
        .unwrap();
    let (enqueued, claimed) = store
        .queue
        .enqueue_claimed(keyed("k2"), &owner())
        .await
        .unwrap();
    assert_eq!(
        enqueued,
        Enqueued::Existing {
            id: "k1".to_string(),
            same_payload: true
        }
    );
    assert!(claimed.is_none());
    assert!(store.history.get("k2").await.unwrap().is_none());

    // Work not due yet waits as `scheduled`, unclaimed.
    let later = NewInvocation {
        run_after: Some(now_ms() + 60_000),
        ..new("later", "f")
    };
    let (enqueued, claimed) = store.queue.enqueue_claimed(later, &owner()).await.unwrap();
    assert_eq!(enqueued, Enqueued::New("later".to_string()));
    assert!(claimed.is_none());
    assert_eq!(state_of(&store, "later").await, State::Scheduled);
}

async fn a_result_under_an_old_lease_changes_nothing<K>((store, _keep): (Store, K)) {
    store.queue.enqueue(new("a", "f")).await.unwrap();
    let first = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    // The first claimant goes silent; its work is rescued and claimed again.
    store.queue.recover(&owner()).await.unwrap();
    let second = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    assert!(second.lease.fence > first.lease.fence);
    assert_eq!(second.attempt, 2);
    let late = store
        .queue
        .finish(&first.lease, failed(), Next::Dead, Chain::default())
        .await
        .unwrap();
    assert!(!late, "a result under an old lease must be dropped");
    assert!(!store.queue.release(&first.lease).await.unwrap());
    assert_eq!(state_of(&store, "a").await, State::Running);
    assert!(finish_succeeded(&store, &second.lease).await);
    assert_eq!(state_of(&store, "a").await, State::Succeeded);
}

async fn a_released_claim_gives_its_attempt_back<K>((store, _keep): (Store, K)) {
    store.queue.enqueue(new("a", "f")).await.unwrap();
    let claimed = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    assert!(store.queue.release(&claimed.lease).await.unwrap());
    let record = store.history.get("a").await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (State::Queued, 0));
    let again = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    assert_eq!(again.attempt, 1);
}

async fn a_failed_attempt_waits_for_its_retry_time<K>((store, _keep): (Store, K)) {
    store.queue.enqueue(new("a", "f")).await.unwrap();
    let claimed = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    let at = now_ms() + 60_000;
    store
        .queue
        .finish(
            &claimed.lease,
            failed(),
            Next::RetryAt(at),
            Chain::default(),
        )
        .await
        .unwrap();
    let record = store.history.get("a").await.unwrap().unwrap();
    assert_eq!(record.state, State::Failed);
    assert_eq!(record.error.as_deref(), Some("exit 1"));
    assert_eq!(record.next_attempt_at, Some(at));
    assert!(
        claim_due(&store, &owner(), &wanted(&[("f", None)], 10))
            .await
            .is_empty()
    );
    assert_eq!(store.queue.next_due_at().await.unwrap(), Some(at));
    assert_eq!(store.queue.depth().await.unwrap(), 1);
}

async fn only_a_dead_invocation_is_retried_with_a_fresh_round<K>((store, _keep): (Store, K)) {
    assert!(matches!(
        store.queue.retry("nope").await,
        Err(RetryError::NotFound(_))
    ));
    store.queue.enqueue(new("a", "f")).await.unwrap();
    assert!(matches!(
        store.queue.retry("a").await,
        Err(RetryError::NotDead {
            state: State::Queued,
            ..
        })
    ));
    let claimed = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    store
        .queue
        .finish(&claimed.lease, failed(), Next::Dead, Chain::default())
        .await
        .unwrap();
    let record = store.queue.retry("a").await.unwrap();
    assert_eq!(record.state, State::Queued);
    assert_eq!(record.reason, "retry");
    assert_eq!((record.attempt, record.max_attempts), (1, 4));
}

async fn recover_queues_running_work_again_for_the_next_attempt<K>((store, _keep): (Store, K)) {
    store.queue.enqueue(new("a", "f")).await.unwrap();
    store.queue.enqueue(new("b", "f")).await.unwrap();
    let mut last = new("last", "f");
    last.attempts = 1;
    store.queue.enqueue(last).await.unwrap();
    store.queue.claim("a", &owner()).await.unwrap().unwrap();
    store.queue.claim("last", &owner()).await.unwrap().unwrap();
    let recovered = store.queue.recover(&owner()).await.unwrap();
    assert_eq!(
        (recovered.requeued, recovered.dead),
        (1, vec!["last".to_string()])
    );
    assert_eq!(state_of(&store, "a").await, State::Queued);
    assert_eq!(state_of(&store, "b").await, State::Queued);
    let again = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    assert_eq!(again.attempt, 2, "a crash uses up the attempt");
    // Its last attempt crashed the host: it does not run again and again.
    let last = store.history.get("last").await.unwrap().unwrap();
    assert_eq!(last.state, State::Dead);
    assert!(last.error.unwrap().contains("no attempts were left"));
}

async fn claims_a_host_does_not_run_go_back_to_the_queue_after_the_lease<K>(
    (store, _keep): (Store, K),
) {
    for id in ["lost", "runs", "cancelled", "other"] {
        store.queue.enqueue(new(id, "f")).await.unwrap();
    }
    for id in ["lost", "runs", "cancelled"] {
        store.queue.claim(id, &owner()).await.unwrap().unwrap();
    }
    let other = HostId("host-b".into());
    store.queue.claim("other", &other).await.unwrap().unwrap();
    store.queue.cancel("cancelled").await.unwrap();
    let running = ["runs".to_string()];
    // Claimed within the lease: perhaps on its way to the host still.
    let recent = now_ms() - 60_000;
    let released = store.queue.release_lost(&owner(), &running, recent).await;
    assert!(released.unwrap().is_empty());
    let mut released = (store.queue)
        .release_lost(&owner(), &running, now_ms() + 1)
        .await
        .unwrap();
    released.sort();
    assert_eq!(released, ["cancelled", "lost"]);
    let lost = store.history.get("lost").await.unwrap().unwrap();
    assert_eq!((lost.state, lost.attempt), (State::Queued, 0));
    assert_eq!(state_of(&store, "cancelled").await, State::Cancelled);
    assert_eq!(state_of(&store, "runs").await, State::Running);
    assert_eq!(state_of(&store, "other").await, State::Running);
    let again = store.queue.claim("lost", &owner()).await.unwrap().unwrap();
    assert_eq!(again.attempt, 1, "a lost claim uses no attempt");
}

fn timer_fire(id: &str, advance: Option<(i64, i64)>, overlap: Overlap) -> TimerFire {
    let mut invocation = new(id, "t");
    invocation.trigger = TriggerKind::Timer;
    invocation.reason = Reason::Scheduled;
    invocation.timer = Some("t every".to_string());
    TimerFire {
        key: "t every".to_string(),
        advance,
        overlap,
        invocation,
    }
}

async fn a_timer_occurrence_fires_once_and_overlap_decides_skip_or_queue<K>(
    (store, _keep): (Store, K),
) {
    let t = &store.triggers;
    assert_eq!(t.timer_cursor("t every").await.unwrap(), None);
    let fired = t
        .fire_timer(timer_fire("1", Some((100, 100)), Overlap::Skip))
        .await
        .unwrap();
    assert_eq!(fired, Fired::Queued);
    assert_eq!(t.timer_cursor("t every").await.unwrap(), Some(100));
    // The same occurrence again (a second task, or another host): nothing happens.
    let again = t
        .fire_timer(timer_fire("1b", Some((100, 100)), Overlap::Skip))
        .await
        .unwrap();
    assert_eq!(again, Fired::AlreadyFired);
    assert!(store.history.get("1b").await.unwrap().is_none());
    // The next occurrence while the first still waits: skipped.
    let skipped = t
        .fire_timer(timer_fire("2", Some((200, 200)), Overlap::Skip))
        .await
        .unwrap();
    assert_eq!(skipped, Fired::Skipped);
    assert_eq!(state_of(&store, "2").await, State::Skipped);
    // With `queue`, one may wait behind a running one, never two.
    store.queue.claim("1", &owner()).await.unwrap().unwrap();
    let queued = t
        .fire_timer(timer_fire("3", Some((300, 300)), Overlap::Queue))
        .await
        .unwrap();
    assert_eq!(queued, Fired::Queued);
    let second = t
        .fire_timer(timer_fire("4", Some((400, 400)), Overlap::Queue))
        .await
        .unwrap();
    assert_eq!(second, Fired::Skipped);
    // A run outside the schedule leaves the cursor alone.
    t.fire_timer(timer_fire("5", None, Overlap::Queue))
        .await
        .unwrap();
    assert_eq!(t.timer_cursor("t every").await.unwrap(), Some(400));
    t.set_timer_cursor("t every", 1000).await.unwrap();
    assert_eq!(t.timer_cursor("t every").await.unwrap(), Some(1000));
}

async fn a_timer_run_is_not_due_nor_claimed_while_another_run_of_it_is_going<K>(
    (store, _keep): (Store, K),
) {
    let t = &store.triggers;
    t.fire_timer(timer_fire("1", Some((100, 100)), Overlap::Queue))
        .await
        .unwrap();
    store.queue.claim("1", &owner()).await.unwrap().unwrap();
    t.fire_timer(timer_fire("2", Some((200, 200)), Overlap::Queue))
        .await
        .unwrap();
    store.queue.enqueue(new("other", "f")).await.unwrap();
    let mut claimed = store
        .queue
        .claim_due(&owner(), &wanted(&[("t", None), ("f", None)], 10))
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|c| c.lease.id.as_str()).collect();
    assert_eq!(ids, ["other"]);
    assert!(store.queue.claim("2", &owner()).await.unwrap().is_none());
    // A retry that is not yet due is not claimed either.
    let claimed = claimed.remove(0);
    let later = now_ms() + 60_000;
    store
        .queue
        .finish(
            &claimed.lease,
            failed(),
            Next::RetryAt(later),
            Chain::default(),
        )
        .await
        .unwrap();
    assert!(
        store
            .queue
            .claim("other", &owner())
            .await
            .unwrap()
            .is_none()
    );
}

async fn timer_cursors_move_only_forward_and_forgotten_timers_lose_theirs<K>(
    (store, _keep): (Store, K),
) {
    let t = &store.triggers;
    t.set_timer_cursor("a", 5).await.unwrap();
    t.set_timer_cursor("a", 3).await.unwrap();
    assert_eq!(t.timer_cursor("a").await.unwrap(), Some(5));
    t.set_timer_cursor("b", 2).await.unwrap();
    t.forget_timers_except(&["b".to_string()]).await.unwrap();
    assert_eq!(t.timer_cursor("a").await.unwrap(), None);
    assert_eq!(t.timer_cursor("b").await.unwrap(), Some(2));
}

async fn a_startup_run_fires_once_within_its_window_on_any_host<K>((store, _keep): (Store, K)) {
    let t = &store.triggers;
    let hour = Duration::from_secs(3600);
    assert!(t.claim_startup("t", hour).await.unwrap());
    assert!(!t.claim_startup("t", hour).await.unwrap());
    // With no window (one host alone), every start fires.
    assert!(t.claim_startup("t", Duration::ZERO).await.unwrap());
    assert!(t.claim_startup("t", Duration::ZERO).await.unwrap());
}

async fn a_file_event_and_its_receipt_are_stored_together<K>((store, _keep): (Store, K)) {
    let t = &store.triggers;
    let receipt = Receipt { size: 5, mtime: 7 };
    let file = |id: &str| {
        let mut invocation = new(id, "w");
        invocation.trigger = TriggerKind::File;
        invocation.input_dir = Some("/inbox".into());
        invocation
    };
    let fired = t
        .fire_file(
            "w inbox",
            "a.png",
            None,
            Some(receipt),
            Some(file("file-1")),
        )
        .await
        .unwrap();
    assert!(fired);
    assert_eq!(t.receipt("w inbox", "a.png").await.unwrap(), Some(receipt));
    let claimed = store
        .queue
        .claim("file-1", &owner())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.input_dir.as_deref(), Some("/inbox".as_ref()));
    // The same change seen again (by another host, or after a restart): nothing happens.
    let again = t
        .fire_file(
            "w inbox",
            "a.png",
            None,
            Some(receipt),
            Some(file("file-2")),
        )
        .await
        .unwrap();
    assert!(!again);
    assert!(store.history.get("file-2").await.unwrap().is_none());
    // A change the watch does not fire for still moves the receipt.
    let newer = Receipt { size: 6, mtime: 8 };
    assert!(
        t.fire_file("w inbox", "a.png", Some(receipt), Some(newer), None)
            .await
            .unwrap()
    );
    // A change read against a receipt that has moved since is not applied.
    let stale = t
        .fire_file(
            "w inbox",
            "a.png",
            Some(receipt),
            Some(newer),
            Some(file("file-3")),
        )
        .await
        .unwrap();
    assert!(!stale);
    assert!(store.history.get("file-3").await.unwrap().is_none());
    t.fire_file("w inbox", "b.png", None, Some(receipt), None)
        .await
        .unwrap();
    let all = t.receipts("w inbox").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["a.png"], newer);
    assert!(
        t.fire_file("w inbox", "a.png", Some(newer), None, None)
            .await
            .unwrap()
    );
    assert_eq!(t.receipt("w inbox", "a.png").await.unwrap(), None);
    assert!(t.receipts("other").await.unwrap().is_empty());
    // Two hosts seeing the same new file at once: one fires.
    let (first, second) = tokio::join!(
        t.fire_file("w inbox", "c.png", None, Some(receipt), Some(file("c-1"))),
        t.fire_file("w inbox", "c.png", None, Some(receipt), Some(file("c-2")))
    );
    assert!(first.unwrap() ^ second.unwrap(), "exactly one fires");
}

fn sync(id: &str, function: &str, trigger: TriggerKind, output: Output) -> SyncRecord {
    SyncRecord {
        id: id.to_string(),
        function: function.to_string(),
        trigger,
        reason: if trigger == TriggerKind::Manual {
            Reason::Manual
        } else {
            Reason::Http
        },
        started_at: now_ms(),
        host: HostId("host-s".into()),
        payload: Bytes::from_static(b"asked"),
        payload_truncated: false,
        output,
    }
}

async fn history_lists_newest_first_filtered_and_limited<K>((store, _keep): (Store, K)) {
    let h = &store.history;
    h.record(sync("01", "f", TriggerKind::Http, succeeded()));
    h.record(sync("02", "g", TriggerKind::Http, failed()));
    h.record(sync("03", "f", TriggerKind::Manual, succeeded()));
    store.queue.enqueue(new("04", "f")).await.unwrap();
    h.flush().await.unwrap();
    let ids = |records: Vec<super::Record>| -> Vec<String> {
        records.into_iter().map(|r| r.id).collect()
    };
    assert_eq!(
        ids(h.list(&Filter::default()).await.unwrap()),
        ["04", "03", "02", "01"]
    );
    let f = Filter {
        function: Some("f".to_string()),
        ..Filter::default()
    };
    assert_eq!(ids(h.list(&f).await.unwrap()), ["04", "03", "01"]);
    let failed_only = Filter {
        state: Some(State::Failed),
        ..Filter::default()
    };
    assert_eq!(ids(h.list(&failed_only).await.unwrap()), ["02"]);
    let manual = Filter {
        trigger: Some(TriggerKind::Manual),
        ..Filter::default()
    };
    assert_eq!(ids(h.list(&manual).await.unwrap()), ["04", "03"]);
    let two = Filter {
        limit: Some(2),
        ..Filter::default()
    };
    assert_eq!(ids(h.list(&two).await.unwrap()), ["04", "03"]);
    let record = h.get("02").await.unwrap().unwrap();
    assert_eq!(record.host.as_deref(), Some("host-s"));
    assert_eq!(record.state, State::Failed);
    assert_eq!(record.stderr, "oops\n");
    assert_eq!(record.attempt, 1);
    assert_eq!(
        (record.trigger.as_str(), record.reason.as_str()),
        ("http", "http")
    );
    assert!(h.get("nope").await.unwrap().is_none());
}

async fn a_list_filters_by_text_in_the_error_and_pages_by_cursor<K>((store, _keep): (Store, K)) {
    let h = &store.history;
    let failing = |error: &str| Output {
        error: Some(error.to_string()),
        ..failed()
    };
    h.record(sync("01", "f", TriggerKind::Http, failed()));
    h.record(sync(
        "02",
        "f",
        TriggerKind::Http,
        failing("Out of MEMORY: 100% used_up"),
    ));
    h.record(sync("03", "f", TriggerKind::Http, succeeded()));
    h.record(sync("04", "g", TriggerKind::Http, failing("exit 100")));
    h.flush().await.unwrap();
    let ids = |records: Vec<super::Record>| -> Vec<String> {
        records.into_iter().map(|r| r.id).collect()
    };
    let with_error = |text: &str| Filter {
        error: Some(text.to_string()),
        ..Filter::default()
    };
    // Any case; `%`, `_` and `\` are text, not patterns.
    assert_eq!(ids(h.list(&with_error("memory")).await.unwrap()), ["02"]);
    assert_eq!(ids(h.list(&with_error("100%")).await.unwrap()), ["02"]);
    assert_eq!(ids(h.list(&with_error("d_u")).await.unwrap()), ["02"]);
    assert_eq!(
        ids(h.list(&with_error("exit _")).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(h.list(&with_error("\\")).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(h.list(&with_error("EXIT")).await.unwrap()),
        ["04", "01"]
    );
    let both = Filter {
        function: Some("f".to_string()),
        ..with_error("exit")
    };
    assert_eq!(ids(h.list(&both).await.unwrap()), ["01"]);
    // Pages of two, each after the last id of the one before, then none.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = ids(h
            .list(&Filter {
                limit: Some(2),
                before: before.clone(),
                ..Filter::default()
            })
            .await
            .unwrap());
        if page.is_empty() {
            break;
        }
        before = page.last().cloned();
        pages.push(page);
    }
    assert_eq!(pages, [["04", "03"], ["02", "01"]]);
}

async fn stats_count_records_by_state_and_ends_per_minute<K>((store, _keep): (Store, K)) {
    let h = &store.history;
    h.record(sync("01", "f", TriggerKind::Http, succeeded()));
    h.record(sync("02", "f", TriggerKind::Http, succeeded()));
    h.record(sync("03", "g", TriggerKind::Http, failed()));
    store.queue.enqueue(new("04", "f")).await.unwrap();
    h.flush().await.unwrap();
    // A little ahead of now, so that ends in this minute fall inside the window.
    let now = now_ms() + 5_000;
    let stats = h.stats(now, 60).await.unwrap();
    let states: Vec<(&str, u64)> = stats.states.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(states, [("failed", 1), ("queued", 1), ("succeeded", 2)]);
    // The overview's queue depth is the queue's own.
    assert_eq!(store.queue.depth().await.unwrap(), 1);
    assert_eq!(stats.minutes.len(), 60);
    let last = stats.minutes.last().unwrap().at;
    assert!(last <= now && now - last < 60_000, "{last} for {now}");
    assert!(
        stats
            .minutes
            .windows(2)
            .all(|w| w[1].at - w[0].at == 60_000)
    );
    let sum = |f: fn(&super::Minute) -> u64| stats.minutes.iter().map(f).sum::<u64>();
    assert_eq!(
        (sum(|m| m.succeeded), sum(|m| m.failed), sum(|m| m.other)),
        (2, 1, 0)
    );
    // A window that ended before they did holds none of them.
    let earlier = h.stats(now - 3_600_000, 5).await.unwrap();
    assert!(earlier.minutes.iter().all(|m| m.succeeded + m.failed == 0));
}

async fn prune_deletes_only_finished_records_older_than_the_cut<K>((store, _keep): (Store, K)) {
    let h = &store.history;
    h.record(sync("old", "f", TriggerKind::Http, succeeded()));
    store.queue.enqueue(new("waiting", "f")).await.unwrap();
    h.flush().await.unwrap();
    assert_eq!(h.prune(now_ms() - 60_000).await.unwrap(), 0);
    let pruned = h.prune(now_ms() + 60_000).await.unwrap();
    assert_eq!(pruned, 1);
    assert!(h.get("old").await.unwrap().is_none());
    assert!(h.get("waiting").await.unwrap().is_some());
}

async fn a_list_shows_excerpts_and_one_record_all_it_keeps<K>((store, _keep): (Store, K)) {
    let h = &store.history;
    let mut big = new("big", "f");
    big.payload = Bytes::from(vec![b'p'; 100]);
    store.queue.enqueue(big).await.unwrap();
    let claimed = store.queue.claim("big", &owner()).await.unwrap().unwrap();
    let long = Output {
        stdout: Bytes::from(vec![b'o'; 100]),
        stderr: Bytes::from_static(b"short"),
        ..succeeded()
    };
    store
        .queue
        .finish(&claimed.lease, long, Next::Succeeded, Chain::default())
        .await
        .unwrap();
    // Not run yet: no output to cut.
    store.queue.enqueue(new("waiting", "f")).await.unwrap();
    assert!(h.bytes().await.unwrap() > 0);
    let excerpts = Filter {
        excerpt: Some(10),
        ..Filter::default()
    };
    let listed = h.list(&excerpts).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(!listed[0].stdout_truncated);
    let listed = listed[1].clone();
    assert_eq!(
        (
            listed.payload.len(),
            listed.stdout.len(),
            listed.stderr.as_str()
        ),
        (10, 10, "short")
    );
    assert!(listed.payload_truncated && listed.stdout_truncated && !listed.stderr_truncated);
    let whole = h.get("big").await.unwrap().unwrap();
    assert_eq!((whole.payload.len(), whole.stdout.len()), (100, 100));
    assert!(!whole.payload_truncated && !whole.stdout_truncated);
    let all = h.list(&Filter::default()).await.unwrap();
    assert_eq!(all[1].stdout.len(), 100);
    // A synchronous record keeps the excerpt it was given, and says it was cut.
    let mut cut = sync("cut", "f", TriggerKind::Http, succeeded());
    cut.payload_truncated = true;
    h.record(cut);
    h.flush().await.unwrap();
    let cut = h.get("cut").await.unwrap().unwrap();
    assert_eq!(
        (cut.payload.as_str(), cut.payload_truncated),
        ("asked", true)
    );
}

async fn a_silent_hosts_running_work_is_rescued_and_a_live_hosts_is_not<K>(
    (store, _keep): (Store, K),
) {
    let lease = Duration::from_secs(60);
    let started = now_ms();
    store.cluster.heartbeat(&owner(), started).await.unwrap();
    // host-b never says it is alive: as silent as a host gone for longer than the lease.
    let silent = HostId("host-b".into());
    let mut last = new("last", "f");
    last.attempts = 1;
    for invocation in [new("a", "f"), new("b", "f"), last] {
        store.queue.enqueue(invocation).await.unwrap();
    }
    store.queue.claim("a", &owner()).await.unwrap().unwrap();
    let lost = store.queue.claim("b", &silent).await.unwrap().unwrap();
    store.queue.claim("last", &silent).await.unwrap().unwrap();
    let hosts = store.cluster.hosts(lease).await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].id, "host-a");
    assert_eq!(hosts[0].started_at, started);
    assert!(hosts[0].alive);
    assert_eq!(hosts[0].running, 1);

    let rescued = store.cluster.rescue(lease).await.unwrap();
    assert_eq!(
        rescued,
        [super::Rescued {
            host: "host-b".to_string(),
            requeued: 1,
            dead: vec!["last".to_string()]
        }]
    );
    assert_eq!(state_of(&store, "a").await, State::Running);
    assert_eq!(state_of(&store, "b").await, State::Queued);
    let last = store.history.get("last").await.unwrap().unwrap();
    assert_eq!(last.state, State::Dead);
    assert!(last.error.unwrap().contains("fell silent"));
    // The rescued work runs again on a live host, as the next attempt; the silent host's
    // late result changes nothing.
    let again = store.queue.claim("b", &owner()).await.unwrap().unwrap();
    assert_eq!(again.attempt, 2);
    assert!(!finish_succeeded(&store, &lost.lease).await);
    assert!(store.cluster.rescue(lease).await.unwrap().is_empty());
}

async fn claims_take_the_oldest_due_first_within_the_hosts_and_each_functions_room<K>(
    (store, _keep): (Store, K),
) {
    for (id, function) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("c1", "c"),
    ] {
        store.queue.enqueue(new(id, function)).await.unwrap();
    }
    let both = wanted(&[("a", None), ("b", None)], 2);
    assert_eq!(claim_due(&store, &owner(), &both).await, ["a1", "a2"]);
    let mut b_only = wanted(&[("a", None), ("b", None)], 5);
    b_only.functions[0].here = 0;
    assert_eq!(claim_due(&store, &owner(), &b_only).await, ["b1"]);
    let mut one_a = wanted(&[("a", None)], 5);
    one_a.functions[0].here = 1;
    assert_eq!(claim_due(&store, &owner(), &one_a).await, ["a3"]);
    // A function this host has not loaded keeps its work queued.
    assert!(claim_due(&store, &owner(), &both).await.is_empty());
    assert_eq!(state_of(&store, "c1").await, State::Queued);
    let claimed = store.history.get("a1").await.unwrap().unwrap();
    assert_eq!((claimed.state, claimed.attempt), (State::Running, 1));
    assert_eq!(claimed.host.as_deref(), Some("host-a"));
}

async fn a_functions_concurrency_holds_across_hosts_claiming_at_once<K>(
    (store, _keep): (Store, K),
) {
    for n in 0..10 {
        store
            .queue
            .enqueue(new(&format!("s{n}"), "s"))
            .await
            .unwrap();
    }
    let single = wanted(&[("s", Some(1))], 5);
    let (a, b) = (owner(), HostId("host-b".into()));
    let (first, second) = tokio::join!(
        store.queue.claim_due(&a, &single),
        store.queue.claim_due(&b, &single)
    );
    let mut claimed = first.unwrap();
    claimed.extend(second.unwrap());
    assert_eq!(
        claimed.len(),
        1,
        "concurrency = 1 is one run on all hosts together"
    );
    assert!(claim_due(&store, &b, &single).await.is_empty());
    let running = claimed.remove(0);
    finish_succeeded(&store, &running.lease).await;
    assert_eq!(claim_due(&store, &b, &single).await.len(), 1);
    // Two may run with concurrency = 2, one already does: one more, wherever.
    let double = wanted(&[("s", Some(2))], 5);
    let (first, second) = tokio::join!(
        store.queue.claim_due(&a, &double),
        store.queue.claim_due(&b, &double)
    );
    assert_eq!(first.unwrap().len() + second.unwrap().len(), 1);
}

async fn a_higher_priority_is_claimed_first_even_when_younger<K>((store, _keep): (Store, K)) {
    for (id, function) in [("old", "a"), ("older-b", "b")] {
        store.queue.enqueue(new(id, function)).await.unwrap();
    }
    let mut urgent = new("urgent", "a");
    urgent.priority = 10;
    store.queue.enqueue(urgent).await.unwrap();
    let mut limited = wanted(&[("a", Some(5)), ("b", None)], 1);
    assert_eq!(claim_due(&store, &owner(), &limited).await, ["urgent"]);
    limited.limit = 5;
    assert_eq!(
        claim_due(&store, &owner(), &limited).await,
        ["old", "older-b"]
    );
    let record = store.history.get("urgent").await.unwrap().unwrap();
    assert_eq!(record.priority, 10);
}

async fn delayed_work_waits_as_scheduled_and_is_claimed_once_due<K>((store, _keep): (Store, K)) {
    let f = wanted(&[("f", None)], 5);
    let mut later = new("later", "f");
    let at = now_ms() + 3_600_000;
    later.run_after = Some(at);
    store.queue.enqueue(later).await.unwrap();
    let record = store.history.get("later").await.unwrap().unwrap();
    assert_eq!(record.state, State::Scheduled);
    assert_eq!(record.next_attempt_at, Some(at));
    assert_eq!(store.queue.depth().await.unwrap(), 1);
    assert_eq!(store.queue.next_due_at().await.unwrap(), Some(at));
    assert!(claim_due(&store, &owner(), &f).await.is_empty());
    // Due in a moment: claimed once due, as any queued work.
    let mut soon = new("soon", "f");
    soon.run_after = Some(now_ms() + 200);
    store.queue.enqueue(soon).await.unwrap();
    assert_eq!(state_of(&store, "soon").await, State::Scheduled);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let claimed = claim_due(&store, &owner(), &f).await;
        if !claimed.is_empty() {
            assert_eq!(claimed, ["soon"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state_of(&store, "soon").await, State::Running);
    // A due time in the past is now.
    let mut past = new("past", "f");
    past.run_after = Some(1);
    store.queue.enqueue(past).await.unwrap();
    assert_eq!(state_of(&store, "past").await, State::Queued);
}

async fn an_idempotency_key_gives_the_first_invocation_again<K>((store, _keep): (Store, K)) {
    let keyed = |id: &str, function: &str, payload: &'static [u8]| {
        let mut n = new(id, function);
        n.idempotency_key = Some("k".to_string());
        n.payload = Bytes::from_static(payload);
        n
    };
    let q = &store.queue;
    assert_eq!(
        q.enqueue(keyed("a", "f", b"x")).await.unwrap(),
        Enqueued::New("a".into())
    );
    let again = q.enqueue(keyed("b", "f", b"x")).await.unwrap();
    assert_eq!(
        again,
        Enqueued::Existing {
            id: "a".into(),
            same_payload: true
        }
    );
    let other = q.enqueue(keyed("c", "f", b"y")).await.unwrap();
    assert_eq!(
        other,
        Enqueued::Existing {
            id: "a".into(),
            same_payload: false
        }
    );
    assert!(store.history.get("b").await.unwrap().is_none());
    assert_eq!(
        store
            .history
            .get("a")
            .await
            .unwrap()
            .unwrap()
            .idempotency_key
            .as_deref(),
        Some("k")
    );
    // Keys are the function's own.
    assert_eq!(
        q.enqueue(keyed("d", "g", b"x")).await.unwrap(),
        Enqueued::New("d".into())
    );
    // Two at once with one key: one is recorded.
    let (first, second) = tokio::join!(
        q.enqueue(keyed("e1", "h", b"x")),
        q.enqueue(keyed("e2", "h", b"x"))
    );
    let news = [first.unwrap(), second.unwrap()]
        .iter()
        .filter(|e| matches!(e, Enqueued::New(_)))
        .count();
    assert_eq!(news, 1);
    assert_eq!(q.depth().await.unwrap(), 3);
}

async fn cancel_ends_waiting_work_at_once_and_marks_running_work_for_its_host<K>(
    (store, _keep): (Store, K),
) {
    let cancelled = |r: Result<Cancelled, CancelError>| match r {
        Ok(Cancelled::Now(record)) => record,
        other => panic!("expected cancelled at once, got {other:?}"),
    };
    let requested = |r: Result<Cancelled, CancelError>| match r {
        Ok(Cancelled::Requested(record)) => record,
        other => panic!("expected a cancel request, got {other:?}"),
    };
    // Waiting in each way: queued, scheduled, failed and awaiting its retry.
    store.queue.enqueue(new("queued", "f")).await.unwrap();
    let mut later = new("scheduled", "f");
    later.run_after = Some(now_ms() + 60_000);
    store.queue.enqueue(later).await.unwrap();
    store.queue.enqueue(new("retrying", "f")).await.unwrap();
    let claimed = store
        .queue
        .claim("retrying", &owner())
        .await
        .unwrap()
        .unwrap();
    let retry_at = now_ms() + 60_000;
    store
        .queue
        .finish(
            &claimed.lease,
            failed(),
            Next::RetryAt(retry_at),
            Chain::default(),
        )
        .await
        .unwrap();
    for id in ["queued", "scheduled", "retrying"] {
        let record = cancelled(store.queue.cancel(id).await);
        assert_eq!(record.state, State::Cancelled, "{id}");
        assert_eq!(record.error.as_deref(), Some(super::CANCELLED), "{id}");
        assert!(record.finished_at.is_some() && record.next_attempt_at.is_none());
    }
    assert_eq!(store.queue.depth().await.unwrap(), 0);
    assert!(
        store
            .queue
            .claim("queued", &owner())
            .await
            .unwrap()
            .is_none()
    );
    // Ended work cannot be; nor an id that is not there.
    assert!(matches!(
        store.queue.cancel("queued").await,
        Err(CancelError::Ended {
            state: State::Cancelled,
            ..
        })
    ));
    assert!(matches!(
        store.queue.cancel("nope").await,
        Err(CancelError::NotFound(_))
    ));
    assert!(
        matches!(
            store.queue.retry("queued").await,
            Err(RetryError::NotDead { .. })
        ),
        "a cancelled invocation is never retried"
    );

    // Running: marked, found by its host, and it ends cancelled even when it failed on
    // its own meanwhile (no retry); a success that came first stays a success.
    for (id, output, next, ends) in [
        (
            "failing",
            failed(),
            Next::RetryAt(now_ms()),
            State::Cancelled,
        ),
        ("stopped", failed(), Next::Cancelled, State::Cancelled),
        ("succeeding", succeeded(), Next::Succeeded, State::Succeeded),
    ] {
        store.queue.enqueue(new(id, "f")).await.unwrap();
        let claimed = store.queue.claim(id, &owner()).await.unwrap().unwrap();
        let record = requested(store.queue.cancel(id).await);
        assert!(record.cancel_requested && record.state == State::Running);
        let asked = store
            .queue
            .cancels(&[id.to_string(), "other".to_string()])
            .await
            .unwrap();
        assert_eq!(asked, [id.to_string()]);
        assert!(
            store
                .queue
                .finish(&claimed.lease, output, next, Chain::default())
                .await
                .unwrap()
        );
        assert_eq!(state_of(&store, id).await, ends, "{id}");
        assert!(
            store
                .queue
                .cancels(&[id.to_string()])
                .await
                .unwrap()
                .is_empty()
        );
    }
    // Given back at a shutdown, after a crash, or from a silent host: cancelled, not queued.
    store.queue.enqueue(new("released", "f")).await.unwrap();
    let claimed = store
        .queue
        .claim("released", &owner())
        .await
        .unwrap()
        .unwrap();
    requested(store.queue.cancel("released").await);
    assert!(store.queue.release(&claimed.lease).await.unwrap());
    assert_eq!(state_of(&store, "released").await, State::Cancelled);
    store.queue.enqueue(new("crashed", "f")).await.unwrap();
    store
        .queue
        .claim("crashed", &owner())
        .await
        .unwrap()
        .unwrap();
    requested(store.queue.cancel("crashed").await);
    store.queue.recover(&owner()).await.unwrap();
    assert_eq!(state_of(&store, "crashed").await, State::Cancelled);
    // A host never heard from is silent.
    let silent = HostId("host-silent".into());
    store.queue.enqueue(new("rescued", "f")).await.unwrap();
    store
        .queue
        .claim("rescued", &silent)
        .await
        .unwrap()
        .unwrap();
    requested(store.queue.cancel("rescued").await);
    store.cluster.rescue(Duration::from_secs(30)).await.unwrap();
    assert_eq!(state_of(&store, "rescued").await, State::Cancelled);
    assert_eq!(store.queue.depth().await.unwrap(), 0);
    // Cancelled records are pruned like any that ended.
    assert!(store.history.prune(now_ms() + 1).await.unwrap() >= 8);
}

async fn a_chain_is_queued_with_the_result_that_starts_it_and_only_then<K>(
    (store, _keep): (Store, K),
) {
    let child = |id: &str, function: &str, parent: &str| {
        let mut child = new(id, function);
        child.trigger = TriggerKind::Chain;
        child.reason = Reason::OnSuccess;
        child.parent_id = Some(parent.to_string());
        child.depth = 1;
        child
    };
    let chain = |parent: &str| Chain {
        on_success: vec![child("b1", "b", parent), child("c1", "c", parent)],
        on_failure: Some(child("h1", "h", parent)),
    };
    // A success queues the on_success children, with their parent and depth.
    store.queue.enqueue(new("a", "a")).await.unwrap();
    let claimed = store.queue.claim("a", &owner()).await.unwrap().unwrap();
    assert_eq!(claimed.depth, 0);
    let done = store
        .queue
        .finish(&claimed.lease, succeeded(), Next::Succeeded, chain("a"))
        .await
        .unwrap();
    assert!(done);
    assert_eq!(store.history.children("a").await.unwrap(), ["b1", "c1"]);
    let b1 = store.history.get("b1").await.unwrap().unwrap();
    assert_eq!(b1.parent_id.as_deref(), Some("a"));
    assert_eq!((b1.state, b1.trigger.as_str()), (State::Queued, "chain"));
    let claimed = store.queue.claim("b1", &owner()).await.unwrap().unwrap();
    assert_eq!(claimed.depth, 1);
    // A failure with a retry to come, or a cancel, starts nothing; a late result under an
    // old lease neither.
    store.queue.enqueue(new("x", "a")).await.unwrap();
    let first = store.queue.claim("x", &owner()).await.unwrap().unwrap();
    let mut again = chain("x");
    again.on_success[0].id = "b2".to_string();
    again.on_success[1].id = "c2".to_string();
    again.on_failure.as_mut().unwrap().id = "h2".to_string();
    let retry_at = now_ms();
    store
        .queue
        .finish(
            &first.lease,
            failed(),
            Next::RetryAt(retry_at),
            again.clone(),
        )
        .await
        .unwrap();
    let second = store.queue.claim("x", &owner()).await.unwrap().unwrap();
    let stale = store
        .queue
        .finish(&first.lease, succeeded(), Next::Succeeded, again.clone())
        .await
        .unwrap();
    assert!(!stale);
    assert!(store.history.children("x").await.unwrap().is_empty());
    // Dead: the handler gets the record, as it ended, as JSON.
    store
        .queue
        .finish(&second.lease, failed(), Next::Dead, again)
        .await
        .unwrap();
    assert_eq!(store.history.children("x").await.unwrap(), ["h2"]);
    let handler = store.queue.claim("h2", &owner()).await.unwrap().unwrap();
    let record: serde_json::Value = serde_json::from_slice(&handler.payload).unwrap();
    assert_eq!(
        (&record["id"], &record["state"], &record["error"]),
        (
            &serde_json::json!("x"),
            &serde_json::json!("dead"),
            &serde_json::json!("exit 1")
        ),
        "{record}"
    );
    // Marked for cancel: it ends cancelled and starts nothing, whatever it asked.
    store.queue.enqueue(new("y", "a")).await.unwrap();
    let claimed = store.queue.claim("y", &owner()).await.unwrap().unwrap();
    store.queue.cancel("y").await.unwrap();
    let mut last = chain("y");
    last.on_success.clear();
    last.on_failure.as_mut().unwrap().id = "h3".to_string();
    store
        .queue
        .finish(&claimed.lease, failed(), Next::Dead, last)
        .await
        .unwrap();
    assert_eq!(state_of(&store, "y").await, State::Cancelled);
    assert!(store.history.children("y").await.unwrap().is_empty());
}

async fn a_checkpoint_outlives_its_attempt_and_only_the_current_attempt_writes<K>(
    (store, _keep): (Store, K),
) {
    let q = &store.queue;
    q.enqueue(new("a", "f")).await.unwrap();
    assert_eq!(q.checkpoint("a").await.unwrap(), None);
    let first = q.claim("a", &owner()).await.unwrap().unwrap();
    let saved = q
        .save_checkpoint(&first.lease, Bytes::from_static(b"step 3"))
        .await;
    assert!(saved.unwrap());
    assert!(
        q.set_progress(&first.lease, 30, "three of ten")
            .await
            .unwrap()
    );
    let record = store.history.get("a").await.unwrap().unwrap();
    let progress = record.progress.expect("the progress is kept");
    assert_eq!(
        (progress.percent, progress.message.as_str()),
        (30, "three of ten")
    );
    // Through a failure, a shutdown's release and a crash, the next attempt reads it.
    let at = now_ms();
    q.finish(&first.lease, failed(), Next::RetryAt(at), Chain::default())
        .await
        .unwrap();
    let second = q.claim("a", &owner()).await.unwrap().unwrap();
    assert_eq!(
        q.checkpoint("a").await.unwrap().as_deref(),
        Some(&b"step 3"[..])
    );
    let record = store.history.get("a").await.unwrap().unwrap();
    assert_eq!(
        record.progress, None,
        "a new attempt says nothing of its progress yet"
    );
    q.release(&second.lease).await.unwrap();
    let third = q.claim("a", &owner()).await.unwrap().unwrap();
    q.recover(&owner()).await.unwrap();
    assert_eq!(
        q.checkpoint("a").await.unwrap().as_deref(),
        Some(&b"step 3"[..])
    );
    // An attempt that lost its lease writes nothing.
    let stale = q
        .save_checkpoint(&third.lease, Bytes::from_static(b"stale"))
        .await;
    assert!(!stale.unwrap());
    assert!(!q.set_progress(&first.lease, 99, "stale").await.unwrap());
    let fourth = q.claim("a", &owner()).await.unwrap().unwrap();
    assert_eq!(
        q.checkpoint("a").await.unwrap().as_deref(),
        Some(&b"step 3"[..])
    );
    // A success has no more use for it.
    finish_succeeded(&store, &fourth.lease).await;
    assert_eq!(q.checkpoint("a").await.unwrap(), None);
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

async fn key_values_are_set_read_listed_in_order_and_deleted_per_store<K>(
    (store, _keep): (Store, K),
) {
    let kv = &store.kv;
    kv.set(
        "a",
        &pairs(&[("b/2", "two"), ("b/1", "one"), ("c", "see")]),
        100,
    )
    .await
    .unwrap();
    kv.set("other", &pairs(&[("b/1", "elsewhere")]), 100)
        .await
        .unwrap();
    kv.set("a", &pairs(&[("b/1", "uno")]), 100).await.unwrap();
    let got = kv.get("a", &keys(&["b/1", "nope", "c"])).await.unwrap();
    assert_eq!(
        got,
        vec![Some(b"uno".to_vec()), None, Some(b"see".to_vec())]
    );
    assert_eq!(kv.keys("a", "", 0, 100).await.unwrap(), ["b/1", "b/2", "c"]);
    assert_eq!(kv.keys("a", "b/", 0, 100).await.unwrap(), ["b/1", "b/2"]);
    assert_eq!(kv.keys("a", "", 1, 1).await.unwrap(), ["b/2"]);
    assert_eq!(kv.keys("a", "", 3, 10).await.unwrap(), Vec::<String>::new());
    // A prefix is text, not a pattern.
    kv.set("a", &pairs(&[("100%", "x"), ("1_0", "y")]), 100)
        .await
        .unwrap();
    assert_eq!(kv.keys("a", "1_", 0, 10).await.unwrap(), ["1_0"]);
    assert_eq!(kv.keys("a", "100%", 0, 10).await.unwrap(), ["100%"]);
    assert_eq!(kv.delete("a", &keys(&["b/1", "nope"])).await.unwrap(), 1);
    assert_eq!(kv.get("a", &keys(&["b/1"])).await.unwrap(), vec![None]);
    assert_eq!(
        kv.get("other", &keys(&["b/1"])).await.unwrap(),
        vec![Some(b"elsewhere".to_vec())]
    );
}

async fn increment_keeps_decimal_text_and_concurrent_increments_all_count<K>(
    (store, _keep): (Store, K),
) {
    let kv = store.kv.clone();
    assert_eq!(kv.increment("s", "n", 5, 100).await.unwrap(), 5);
    assert_eq!(kv.increment("s", "n", 1, 100).await.unwrap(), 6);
    assert_eq!(
        kv.get("s", &keys(&["n"])).await.unwrap(),
        vec![Some(b"6".to_vec())]
    );
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.increment("s", "many", 1, 100).await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=50).collect::<Vec<u64>>(),
        "each increment saw its own sum"
    );
    assert_eq!(
        kv.get("s", &keys(&["many"])).await.unwrap(),
        vec![Some(b"50".to_vec())]
    );
    kv.set("s", &pairs(&[("word", "five")]), 100).await.unwrap();
    assert!(matches!(
        kv.increment("s", "word", 1, 100).await,
        Err(KvError::NotANumber(key)) if key == "word"
    ));
    kv.set("s", &pairs(&[("big", &u64::MAX.to_string())]), 100)
        .await
        .unwrap();
    assert!(matches!(
        kv.increment("s", "big", 1, 100).await,
        Err(KvError::Overflow(_))
    ));
}

async fn a_stores_key_limit_holds_and_a_refused_batch_sets_nothing<K>((store, _keep): (Store, K)) {
    let kv = &store.kv;
    kv.set("small", &pairs(&[("a", "1"), ("b", "2")]), 2)
        .await
        .unwrap();
    // Replacing a key adds none; another store has its own room.
    kv.set("small", &pairs(&[("a", "one")]), 2).await.unwrap();
    kv.set("roomy", &pairs(&[("c", "3")]), 2).await.unwrap();
    let refused = kv
        .set("small", &pairs(&[("b", "two"), ("c", "3")]), 2)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, KvError::TooManyKeys { store, max: 2 } if store == "small"),
        "{refused}"
    );
    assert_eq!(
        kv.get("small", &keys(&["b", "c"])).await.unwrap(),
        vec![Some(b"2".to_vec()), None],
        "nothing of the refused batch is set"
    );
    assert!(matches!(
        kv.increment("small", "c", 1, 2).await,
        Err(KvError::TooManyKeys { .. })
    ));
    kv.delete("small", &keys(&["a"])).await.unwrap();
    assert_eq!(kv.increment("small", "c", 1, 2).await.unwrap(), 1);
}

/// What one delivery try came to.
fn tried(
    delivered: bool,
    status: Option<u16>,
    error: Option<&str>,
    retry_at: Option<i64>,
) -> CallbackTry {
    CallbackTry {
        delivered,
        status,
        error: error.map(str::to_string),
        retry_at,
    }
}

async fn a_callback_is_due_once_its_invocation_ends_and_held_while_tried<K>(
    (store, _keep): (Store, K),
) {
    let hold = Duration::from_secs(60);
    let with_callback = |id: &str| NewInvocation {
        callback: Some(format!("http://hooks.test/{id}")),
        ..new(id, "f")
    };
    store.queue.enqueue(with_callback("a")).await.unwrap();
    store.queue.enqueue(with_callback("b")).await.unwrap();
    store.queue.enqueue(new("plain", "f")).await.unwrap();
    let callbacks = &store.callbacks;
    assert!(
        callbacks
            .claim_callbacks(10, hold)
            .await
            .unwrap()
            .is_empty(),
        "not due before its invocation ends"
    );
    let record = store.history.get("a").await.unwrap().unwrap();
    let view = record.callback.expect("a callback");
    assert_eq!((view.state, view.attempts), ("waiting", 0));
    for id in ["a", "plain"] {
        let claimed = store.queue.claim(id, &owner()).await.unwrap().unwrap();
        finish_succeeded(&store, &claimed.lease).await;
    }
    let Cancelled::Now(_) = store.queue.cancel("b").await.unwrap() else {
        panic!("b was waiting");
    };
    let mut claimed = callbacks.claim_callbacks(10, hold).await.unwrap();
    claimed.sort_by(|x, y| x.id.cmp(&y.id));
    let due: Vec<(&str, &str, u32)> = claimed
        .iter()
        .map(|d| (d.id.as_str(), d.url.as_str(), d.attempts))
        .collect();
    assert_eq!(
        due,
        [
            ("a", "http://hooks.test/a", 1),
            ("b", "http://hooks.test/b", 1)
        ],
        "succeeded and cancelled are due; one without a callback never is"
    );
    assert!(
        callbacks
            .claim_callbacks(10, hold)
            .await
            .unwrap()
            .is_empty(),
        "held while tried"
    );
    let retry_at = now_ms() - 1;
    callbacks
        .callback_tried(
            &claimed[0],
            tried(false, Some(503), Some("answered 503"), Some(retry_at)),
        )
        .await
        .unwrap();
    callbacks
        .callback_tried(&claimed[1], tried(true, Some(200), None, None))
        .await
        .unwrap();
    let view = store
        .history
        .get("a")
        .await
        .unwrap()
        .unwrap()
        .callback
        .unwrap();
    assert_eq!(
        (
            view.state,
            view.attempts,
            view.last_status,
            view.next_attempt_at
        ),
        ("pending", 1, Some(503), Some(retry_at))
    );
    let again = callbacks.claim_callbacks(10, hold).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.as_str(), again[0].attempts), ("a", 2));
    // The first try, answering late, no longer speaks for the callback.
    callbacks
        .callback_tried(&claimed[0], tried(true, Some(200), None, None))
        .await
        .unwrap();
    let view = store
        .history
        .get("a")
        .await
        .unwrap()
        .unwrap()
        .callback
        .unwrap();
    assert_eq!(view.state, "pending", "a late try changes nothing");
    callbacks
        .callback_tried(
            &again[0],
            tried(false, None, Some("connection refused"), None),
        )
        .await
        .unwrap();
    let view = store
        .history
        .get("a")
        .await
        .unwrap()
        .unwrap()
        .callback
        .unwrap();
    assert_eq!(
        (view.state, view.attempts, view.last_error.as_deref()),
        ("failed", 2, Some("connection refused"))
    );
    let view = store
        .history
        .get("b")
        .await
        .unwrap()
        .unwrap()
        .callback
        .unwrap();
    assert_eq!((view.state, view.last_status), ("delivered", Some(200)));
    assert!(
        callbacks
            .claim_callbacks(10, hold)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_paused_function_stays_paused_until_resumed<K>((store, _keep): (Store, K)) {
    let state = &store.triggers;
    assert!(state.paused().await.unwrap().is_empty());
    assert!(state.set_paused("f", true).await.unwrap());
    assert!(
        !state.set_paused("f", true).await.unwrap(),
        "already paused"
    );
    assert!(state.set_paused("g", true).await.unwrap());
    let paused: Vec<String> = state.paused().await.unwrap().into_iter().collect();
    assert_eq!(paused, ["f", "g"]);
    assert!(state.set_paused("f", false).await.unwrap());
    assert!(!state.set_paused("f", false).await.unwrap(), "not paused");
    let paused: Vec<String> = state.paused().await.unwrap().into_iter().collect();
    assert_eq!(paused, ["g"]);
    // A claimer whose list of paused functions is older than the pause still takes none
    // of its work: the claim itself reads the pause.
    store.queue.enqueue(new("of-g", "g")).await.unwrap();
    store.queue.enqueue(new("t-run", "t")).await.unwrap();
    assert!(state.set_paused("t", true).await.unwrap());
    let only_g = wanted(&[("g", None)], 10);
    assert!(claim_due(&store, &owner(), &only_g).await.is_empty());
    let wanted = wanted(&[("g", None), ("t", None)], 10);
    assert!(claim_due(&store, &owner(), &wanted).await.is_empty());
    assert!(state.set_paused("g", false).await.unwrap());
    assert_eq!(claim_due(&store, &owner(), &wanted).await, ["of-g"]);
}

async fn dead_invocations_are_retried_in_bulk_by_function<K>((store, _keep): (Store, K)) {
    // Three dead of `f`, one dead of `g`, one of `f` that succeeded.
    for (id, function, dies) in [
        ("a", "f", true),
        ("b", "f", true),
        ("c", "f", true),
        ("d", "g", true),
        ("e", "f", false),
    ] {
        store.queue.enqueue(new(id, function)).await.unwrap();
        let claimed = store.queue.claim(id, &owner()).await.unwrap().unwrap();
        let (output, next) = if dies {
            (failed(), Next::Dead)
        } else {
            (succeeded(), Next::Succeeded)
        };
        store
            .queue
            .finish(&claimed.lease, output, next, Chain::default())
            .await
            .unwrap();
    }
    assert_eq!(store.queue.retry_dead(Some("f"), 2).await.unwrap(), 2);
    assert_eq!(store.queue.retry_dead(Some("f"), 10).await.unwrap(), 1);
    assert_eq!(store.queue.retry_dead(Some("f"), 10).await.unwrap(), 0);
    for id in ["a", "b", "c"] {
        let record = store.history.get(id).await.unwrap().unwrap();
        assert_eq!(
            (record.state, record.reason.as_str()),
            (State::Queued, "retry")
        );
        assert_eq!(
            record.max_attempts, 4,
            "a fresh round after its one attempt"
        );
    }
    assert_eq!(state_of(&store, "d").await, State::Dead);
    assert_eq!(state_of(&store, "e").await, State::Succeeded);
    assert_eq!(store.queue.retry_dead(None, 10).await.unwrap(), 1);
    assert_eq!(state_of(&store, "d").await, State::Queued);
}
