//! The coordinator's rules, driven directly with a simulated clock: units move to
//! another contributor when theirs leaves or misses the deadline, rounds close at
//! their target or deadline, idle contributors take turns, and bad results are rejected
//! with the right reason.

use std::time::{Duration, Instant};

use crowdgrad_relay::coordinator::{Coordinator, Rejection};
use crowdgrad_relay::ledger::Ledger;
use crowdgrad_runtime::codec::{self, CodecConfig};
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::protocol::{ServerMsg, Submission, Update, WorkUnit};

mod common;

use common::{Client, made_up_delta, open_with};

#[test]
fn a_unit_whose_contributor_leaves_goes_to_another() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    let mut a = Client::join(&mut c, t0);
    let mut b = Client::join(&mut c, t0);
    let mut late = Client::join(&mut c, t0);
    let (ua, ub) = (a.assignment().expect("a has work"), b.assignment().expect("b has work"));
    assert_ne!(ua.unit_id, ub.unit_id);
    assert!(late.assignment().is_none(), "the round's two units are taken");
    c.leave(a.id, t0);
    let moved = late.assignment().expect("a's unit moves to the idle contributor");
    assert_eq!(moved.unit_id, ua.unit_id);
    assert_eq!(c.status().counters.reassigned, 1);
}

#[test]
fn when_a_round_has_fewer_units_than_idle_contributors_they_take_turns() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    let mut clients: Vec<Client> = (0..3).map(|_| Client::join(&mut c, t0)).collect();
    let mut units_per_client = [0; 3];
    for round in 0..3 {
        let now = t0 + Duration::from_secs(round + 1);
        let assigned: Vec<(usize, WorkUnit)> =
            clients.iter_mut().enumerate().filter_map(|(i, client)| Some((i, client.assignment()?))).collect();
        assert_eq!(assigned.len(), 2, "round {round}: two units for three contributors");
        for (i, unit) in assigned {
            units_per_client[i] += 1;
            let client = &clients[i];
            assert_eq!(c.submit(client.id, client.result(&unit, c.param_count()), now), Ok(()));
        }
    }
    assert_eq!(c.status().version, 3);
    assert_eq!(units_per_client, [2, 2, 2], "each contributor waits one round in three");
}

#[test]
fn a_unit_past_its_deadline_is_reassigned_and_the_slow_result_refused() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    let mut slow = Client::join(&mut c, t0);
    let unit = slow.assignment().expect("work");
    let _other = Client::join(&mut c, t0);
    let mut idle = Client::join(&mut c, t0);
    c.tick(t0 + Duration::from_secs(6));
    assert_eq!(idle.assignment().map(|u| u.unit_id), Some(unit.unit_id), "reassigned after the unit deadline");
    let verdict = c.submit(slow.id, slow.result(&unit, c.param_count()), t0 + Duration::from_secs(7));
    assert_eq!(verdict, Err(Rejection::NotAssigned));
}

#[test]
fn a_round_closes_at_its_target_and_at_its_deadline() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    let mut a = Client::join(&mut c, t0);
    for _ in 0..2 {
        let unit = a.assignment().expect("work");
        assert_eq!(unit.version, 0);
        assert_eq!(c.submit(a.id, a.result(&unit, c.param_count()), t0), Ok(()));
    }
    // Target (2) reached: version 1 is out and a fresh unit is already assigned.
    assert_eq!(c.status().version, 1);
    let unit = a.assignment().expect("work on version 1");
    assert_eq!(unit.version, 1);
    assert_eq!(c.submit(a.id, a.result(&unit, c.param_count()), t0), Ok(()));
    c.tick(t0 + Duration::from_secs(9));
    assert_eq!(c.status().version, 1, "one result of two, before the deadline");
    c.tick(t0 + Duration::from_secs(11));
    assert_eq!(c.status().version, 2, "the deadline closes the round with min_results");
    let history = c.status().history;
    assert_eq!(history.iter().map(|r| r.results).collect::<Vec<_>>(), vec![0, 2, 1]);
}

#[test]
fn bad_results_are_rejected_with_their_reason() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    let mut a = Client::join(&mut c, t0);
    let n = c.param_count();
    let unit = a.assignment().expect("work");
    let stranger = Identity::generate();
    let mut forged = a.result(&unit, n);
    forged.signature = stranger.sign_submission(&forged);
    let cases: Vec<(Submission, Rejection)> = vec![
        (a.signed(Submission { update: Update::Dense(vec![f32::NAN; n]), ..a.result(&unit, n) }), Rejection::NonFinite),
        (a.signed(Submission { loss_after: f32::INFINITY, ..a.result(&unit, n) }), Rejection::NonFinite),
        (a.signed(Submission { update: Update::Dense(vec![0.0; n - 1]), ..a.result(&unit, n) }), Rejection::WrongSize),
        (
            a.signed(Submission { update: Update::Compressed(b"not an update".to_vec()), ..a.result(&unit, n) }),
            Rejection::WrongCodec,
        ),
        (Submission { loss_after: 0.5, ..a.result(&unit, n) }, Rejection::BadSignature),
        (forged, Rejection::BadSignature),
        (a.signed(Submission { update: compressed(n), ..a.result(&unit, n) }), Rejection::WrongCodec),
        (a.signed(Submission { steps: 3, ..a.result(&unit, n) }), Rejection::WrongSteps),
        (a.signed(Submission { version: 7, ..a.result(&unit, n) }), Rejection::WrongVersion),
        (a.signed(Submission { unit_id: 999, ..a.result(&unit, n) }), Rejection::UnknownUnit),
    ];
    for (submission, reason) in cases {
        assert_eq!(c.submit(a.id, submission, t0), Err(reason));
        // A refused result frees its unit; with no one else idle, it comes back.
        let back = (reason != Rejection::UnknownUnit).then_some(unit.unit_id);
        assert_eq!(a.assignment().map(|u| u.unit_id), back, "{reason:?}");
    }
    // The honest result is accepted once, and a replay of it is refused.
    assert_eq!(c.submit(a.id, a.result(&unit, n), t0), Ok(()));
    assert_eq!(c.submit(a.id, a.result(&unit, n), t0), Err(Rejection::NotAssigned));
    let next = a.assignment().expect("next unit");
    assert_eq!(next.codec, None, "this job's units ask for dense updates");
    assert_eq!(c.submit(a.id, a.result(&next, n), t0), Ok(()));
    assert_eq!(c.submit(a.id, a.result(&unit, n), t0), Err(Rejection::Stale), "its round has closed");
    let rejected = c.status().counters.rejected;
    assert_eq!(rejected.get("non_finite"), Some(&2));
    assert_eq!(rejected.get("wrong_codec"), Some(&2));
    assert_eq!(rejected.get("bad_signature"), Some(&2));
    assert_eq!(rejected.values().sum::<u64>(), 12);
}

#[test]
fn updates_must_come_as_their_unit_asks() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| job.compression.enabled = true);
    let mut a = Client::join(&mut c, t0);
    let n = c.param_count();
    let unit = a.assignment().expect("work");
    assert_eq!(unit.codec, Some(CodecConfig::default()), "units ask for compressed updates");
    let other_k = CodecConfig { k: 64, ..CodecConfig::default() };
    let other_k = Update::Compressed(codec::encode(&vec![1e-3; n], &mut vec![0.0; n], &other_k));
    let cases = [
        (a.result(&unit, n), Rejection::WrongCodec),
        (a.signed(Submission { update: other_k, ..a.result(&unit, n) }), Rejection::WrongCodec),
        (a.signed(Submission { update: compressed(n - 1), ..a.result(&unit, n) }), Rejection::Malformed),
        (
            a.signed(Submission { update: Update::Compressed(b"not an update".to_vec()), ..a.result(&unit, n) }),
            Rejection::Malformed,
        ),
    ];
    for (submission, reason) in cases {
        assert_eq!(c.submit(a.id, submission, t0), Err(reason));
    }
    let unit = a.assignment().expect("its unit comes back");
    assert_eq!(c.submit(a.id, a.signed(Submission { update: compressed(n), ..a.result(&unit, n) }), t0), Ok(()));
}

#[test]
fn a_refused_result_frees_its_unit_at_once() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    let n = c.param_count();
    let (mut a, mut b, mut idle) = (Client::join(&mut c, t0), Client::join(&mut c, t0), Client::join(&mut c, t0));
    let (unit, _) = (a.assignment().expect("a has work"), b.assignment().expect("b has work"));
    assert!(idle.assignment().is_none(), "the round's two units are taken");
    let nan = a.signed(Submission { update: Update::Dense(vec![f32::NAN; n]), ..a.result(&unit, n) });
    assert_eq!(c.submit(a.id, nan, t0), Err(Rejection::NonFinite));
    assert_eq!(
        idle.assignment().map(|u| u.unit_id),
        Some(unit.unit_id),
        "another contributor has it, long before its deadline"
    );
    assert_eq!(c.submit(a.id, a.result(&unit, n), t0), Err(Rejection::NotAssigned));
}

#[test]
fn the_norm_bound_survives_a_restart() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| job.round.target = 1);
    let mut a = Client::join(&mut c, t0);
    let n = c.param_count();
    accept_four(&mut c, &mut a, t0);
    drop(c);
    let mut c = open_with(&dir, |job| job.round.target = 1);
    let mut stranger = Client::join(&mut c, t0);
    let unit = stranger.assignment().expect("work");
    let scaled: Vec<f32> = made_up_delta(unit.unit_id, n).iter().map(|d| 1e4 * d).collect();
    let scaled = stranger.signed(Submission { update: Update::Dense(scaled), ..stranger.result(&unit, n) });
    assert_eq!(c.submit(stranger.id, scaled, t0), Err(Rejection::NormBound), "the first result after a restart");
    let unit = stranger.assignment().expect("its unit comes back");
    let replayed = Submission { update: Update::Dense(made_up_delta(1, n)), ..stranger.result(&unit, n) };
    let replayed = stranger.signed(replayed);
    assert_eq!(
        c.submit(stranger.id, replayed, t0),
        Err(Rejection::Duplicate),
        "unit 1's delta, from before the restart"
    );
}

/// Four of `a`'s results accepted in a row (rounds of one): enough for the norm bound.
fn accept_four(c: &mut Coordinator, a: &mut Client, now: Instant) {
    let n = c.param_count();
    for _ in 0..4 {
        let unit = a.assignment().expect("work");
        assert_eq!(c.submit(a.id, a.result(&unit, n), now), Ok(()));
    }
}

/// An honest compressed update of `n` values.
fn compressed(n: usize) -> Update {
    Update::Compressed(codec::encode(&vec![1e-3; n], &mut vec![0.0; n], &CodecConfig::default()))
}

#[test]
fn an_unwritable_checkpoint_folder_keeps_the_last_good_version_until_writing_works() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    // A file where the checkpoint folder should be: every write fails (even for root).
    let versions = dir.path().join("versions");
    std::fs::remove_dir_all(&versions).expect("remove the folder");
    std::fs::write(&versions, b"not a folder").expect("put a file in its place");
    let (mut a, mut b) = (Client::join(&mut c, t0), Client::join(&mut c, t0));
    let (ua, ub) = (a.assignment().expect("a has work"), b.assignment().expect("b has work"));
    let n = c.param_count();
    c.submit(a.id, a.result(&ua, n), t0).expect("accepted");
    c.submit(b.id, b.result(&ub, n), t0).expect("accepted");
    let s = c.status();
    assert_eq!(s.version, 0, "nothing unsaved is served");
    let error = s.storage_error.expect("status says why");
    assert!(error.contains("version 1 could not be saved") && error.contains("serving version 0"), "{error}");
    c.tick(t0 + Duration::from_secs(2));
    assert_eq!(c.status().version, 0, "still failing");
    std::fs::remove_file(&versions).expect("clear the way");
    c.tick(t0 + Duration::from_secs(4));
    let s = c.status();
    assert_eq!((s.version, s.storage_error), (1, None), "the retry commits once writing works");
    assert!(
        versions.join("v00000001.safetensors").is_file() && versions.join("v00000001.momentum.safetensors").is_file()
    );
}

#[test]
fn scaled_zero_replayed_and_copied_deltas_are_refused() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| job.round.target = 1);
    let mut a = Client::join(&mut c, t0);
    let n = c.param_count();
    accept_four(&mut c, &mut a, t0);
    let unit = a.assignment().expect("work");
    let scaled = a.signed(Submission { update: Update::Dense(vec![0.1; n]), ..a.result(&unit, n) });
    assert_eq!(c.submit(a.id, scaled, t0), Err(Rejection::NormBound), "100 × the recent norms");
    let free_ride = a.signed(Submission { update: Update::Dense(vec![0.0; n]), ..a.result(&unit, n) });
    assert_eq!(c.submit(a.id, free_ride, t0), Err(Rejection::NormBound), "a zero delta");
    let copied = a.signed(Submission { update: Update::Dense(made_up_delta(1, n)), ..a.result(&unit, n) });
    assert_eq!(c.submit(a.id, copied, t0), Err(Rejection::Duplicate), "unit 1's delta again");
    assert_eq!(c.submit(a.id, a.result(&unit, n), t0), Ok(()), "the honest result still counts");
}

#[test]
fn twin_units_go_to_two_contributors_dense_and_agreeing_twins_count_half_each() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| job.verify.redundancy = 1.0);
    let n = c.param_count();
    let mut a = Client::join(&mut c, t0);
    let unit = a.assignment().expect("work");
    assert_eq!(unit.codec, None, "twin units travel dense");
    let same = |client: &Client, unit: &WorkUnit| {
        client.signed(Submission { update: Update::Dense(vec![2e-3; n]), ..client.result(unit, n) })
    };
    assert_eq!(c.submit(a.id, same(&a, &unit), t0), Ok(()));
    assert!(a.assignment().is_none(), "its twin never goes to the same contributor");
    assert_eq!(c.status().round_results, 0, "held until its twin's result");
    let mut b = Client::join(&mut c, t0);
    let twin = b.assignment().expect("the twin");
    assert_ne!(twin.unit_id, unit.unit_id);
    assert_eq!((twin.shard, twin.seed, twin.steps), (unit.shard, unit.seed, unit.steps), "the same work");
    assert_eq!(c.submit(b.id, same(&b, &twin), t0), Ok(()), "the same Δ from a twin is agreement, not a copy");
    let status = c.status();
    assert_eq!((status.counters.twins_compared, status.counters.twins_disagreed), (1, 0));
    assert_eq!(status.version, 1, "both results count: the round of 2 is complete");
}

#[test]
fn acks_and_hellos_flow_while_a_version_commits_off_the_lock() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    // Commits go to this queue, as the relay's go to its committer thread.
    let (queue, jobs) = std::sync::mpsc::channel();
    c.commit_off_lock(queue);
    let (mut a, mut b) = (Client::join(&mut c, t0), Client::join(&mut c, t0));
    let (ua, ub) = (a.assignment().expect("a has work"), b.assignment().expect("b has work"));
    assert_eq!(c.submit(a.id, a.result(&ua, c.param_count()), t0), Ok(()));
    assert_eq!(c.submit(b.id, b.result(&ub, c.param_count()), t0), Ok(()));
    // The round is full: its commit waits in the queue, and b has its ack already.
    let job = jobs.try_recv().expect("the round's commit was handed off");
    let acked =
        std::iter::from_fn(|| b.inbox.try_recv().ok()).any(|m| matches!(m, ServerMsg::Ack(ack) if ack.accepted));
    assert!(acked, "the ack does not wait for the commit");
    assert_eq!(c.status().version, 0, "version 1 is not served before it is written");
    // A newcomer is welcomed and told to wait: a unit now would start from version 0.
    let mut late = Client::join(&mut c, t0);
    let told: Vec<ServerMsg> = std::iter::from_fn(|| late.inbox.try_recv().ok()).collect();
    assert!(matches!(told.first(), Some(ServerMsg::Welcome(_))), "{told:?}");
    assert!(told.iter().any(|m| matches!(m, ServerMsg::Wait { .. })), "{told:?}");
    // The commit runs elsewhere, then the new version is served and the round opens.
    let done = std::thread::spawn(move || job.run()).join().expect("the commit runs");
    c.committed(done, t0 + Duration::from_millis(10));
    assert_eq!(c.status().version, 1);
    let next = late.assignment().expect("the waiting contributor gets a unit of the new round");
    assert_eq!(next.version, 1);
}

#[test]
fn grouped_writes_hold_each_ack_until_its_result_is_in_the_ledger() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| job.round.target = 4);
    c.group_writes();
    let mut a = Client::join(&mut c, t0);
    c.flush_writes();
    let unit = a.assignment().expect("a has work");
    assert_eq!(c.submit(a.id, a.result(&unit, c.param_count()), t0), Ok(()));
    // Another connection, as a restarted relay would read the file.
    let reader = Ledger::open_read_only(dir.path()).expect("the ledger opens");
    let acked = |a: &mut Client| std::iter::from_fn(|| a.inbox.try_recv().ok()).any(|m| matches!(m, ServerMsg::Ack(_)));
    assert!(!acked(&mut a), "no ack before its result is written");
    assert!(reader.receipts(None).expect("receipts").is_empty(), "the transaction is still open");
    c.flush_writes();
    assert_eq!(reader.receipts(None).expect("receipts").len(), 1, "the receipt landed");
    assert!(acked(&mut a), "the ack follows its write");
}

#[test]
fn an_old_version_s_files_are_deleted_only_once_the_ledger_has_forgotten_it() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |job| {
        job.round.target = 1;
        (job.storage.keep_last, job.storage.keep_every) = (1, 0);
    });
    c.group_writes();
    let (queue, jobs) = std::sync::mpsc::channel();
    c.commit_off_lock(queue);
    let mut a = Client::join(&mut c, t0);
    c.flush_writes();
    let unit = a.assignment().expect("a has work");
    assert_eq!(c.submit(a.id, a.result(&unit, c.param_count()), t0), Ok(()));
    c.flush_writes();
    let done = std::thread::spawn(move || jobs.recv().expect("the round's commit").run()).join().expect("it runs");
    c.committed(done, t0);
    // Version 1 is served and version 0 pruned, in the transaction still open.
    let reader = Ledger::open_read_only(dir.path()).expect("the ledger opens");
    let v0 = dir.path().join("versions").join("v00000000.safetensors");
    assert_eq!(reader.kept_versions().expect("kept"), [0, 1], "another connection still reads version 0 as kept");
    assert!(v0.is_file(), "so its files stay until the ledger has forgotten it");
    c.flush_writes();
    assert_eq!(reader.kept_versions().expect("kept"), [1]);
    assert!(!v0.exists(), "then they go");
}

#[test]
fn a_newcomer_is_written_to_the_ledger_with_its_first_unit_and_forgotten_with_its_last_session_if_it_had_none() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = open_with(&dir, |_| {});
    let ledger = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).expect("the ledger opens");
    let rows = || ledger.query_row("SELECT COUNT(*) FROM contributors", [], |r| r.get::<_, i64>(0)).expect("count");
    let (mut a, mut b) = (Client::join(&mut c, t0), Client::join(&mut c, t0));
    assert!(a.assignment().is_some() && b.assignment().is_some());
    assert_eq!(rows(), 2, "each contributor given a unit has its row");
    // The round's two units are out: a third hello is welcomed, and waits.
    let (tx, inbox) = tokio::sync::mpsc::channel(16);
    let mut idle = Client { id: c.join(tx, hello(None), t0), inbox, identity: Identity::generate() };
    let Some(ServerMsg::Welcome(welcome)) = idle.inbox.try_recv().ok() else { panic!("a welcome first") };
    assert!(idle.assignment().is_none());
    assert_eq!(rows(), 2, "a contributor without work has no row yet");
    // Its token resumes it while a session of it is open, and only then.
    let (second, resumed) = join_as(&mut c, Some(welcome.token.clone()), t0);
    assert_eq!(resumed.contributor, welcome.contributor, "the token resumes the waiting newcomer");
    c.leave(idle.id, t0);
    c.leave(second, t0);
    let (_, third) = join_as(&mut c, Some(welcome.token), t0);
    assert_ne!(third.contributor, welcome.contributor, "forgotten with its last session");
    assert_eq!(rows(), 2, "and never written");
}

/// Joins with a hello resuming `token` when given; the session and its welcome.
fn join_as(c: &mut Coordinator, token: Option<String>, now: Instant) -> (u64, crowdgrad_runtime::protocol::Welcome) {
    let (tx, mut inbox) = tokio::sync::mpsc::channel(16);
    let session = c.join(tx, hello(token), now);
    let Ok(ServerMsg::Welcome(welcome)) = inbox.try_recv() else { panic!("a welcome first") };
    (session, welcome)
}

/// A hello from a CPU, resuming with `token` when given.
fn hello(token: Option<String>) -> crowdgrad_runtime::protocol::Hello {
    let device = crowdgrad_runtime::backend::DeviceInfo { kind: "cpu".into(), adapter: "test".into(), software: true };
    let key = Identity::generate().public();
    crowdgrad_runtime::protocol::Hello { agent: "test".into(), device, resume: token, gflops: 0.0, key, p2p: false }
}
