//! Ordering: transactions sharing a project never interleave, and the event log can be
//! followed, dropped and resumed without losing or repeating anything.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{self, EventKind, TransactionState};
use support::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn two_releases_sharing_a_project_run_one_after_the_other() {
    let c = Cluster::family().await;
    c.block("A");
    let (first, second) = tokio::join!(
        c.cli(&["release", "create", "T4", "A=T4A", "B=T4B", "C=T4C"]),
        async {
            // T5 arrives once T4 holds B.
            c.wait_state("T4", TransactionState::Preparing).await;
            c.cli(&["release", "create", "T5", "B=T5B", "-o", "json"])
                .await
        }
    );
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(second.code, 0, "{second:?}");
    let t5 = second.json();
    assert_eq!(t5["transaction"]["state"], "TRANSACTION_STATE_PENDING");
    assert_eq!(
        t5["transaction"]["reason"],
        "waiting for T4, which holds project B"
    );
    assert_eq!(t5["plan"]["waitsFor"][0], "T4");

    c.heal("A");
    c.wait_state("T4", TransactionState::Committed).await;
    c.wait_state("T5", TransactionState::Committed).await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T4A"), ("B", "T5B"), ("C", "T4C")])
    );

    let events = c.events().await;
    let seq = |tx: &str, kind: EventKind| {
        events
            .iter()
            .find(|e| e.transaction_id == tx && e.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} for {tx}"))
            .seq
    };
    let queued = events
        .iter()
        .find(|e| e.transaction_id == "T5" && e.kind == EventKind::TransactionQueued as i32)
        .unwrap();
    assert_eq!(queued.message, "waiting for T4, which holds project B");
    assert!(
        seq("T4", EventKind::TransactionCommitted) < seq("T5", EventKind::PrepareStarted),
        "T5 prepared only after T4 finished"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gap-free and ordered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_that_disconnects_and_resumes_misses_nothing_and_sees_nothing_twice() {
    let c = Cluster::family().await;
    let mut stream = c
        .client()
        .await
        .watch_events(pb::WatchEventsRequest {
            from_seq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(stream.message().await.unwrap().unwrap());
    }
    drop(stream);

    c.release("T2", &["B=T2B"], 0).await;
    c.release("T3", &["C=T3C"], 0).await;

    // Resume from the last sequence number seen, as the CLI's `watch --from` does.
    let mut resumed = c
        .client()
        .await
        .watch_events(pb::WatchEventsRequest {
            from_seq: seen.last().unwrap().seq + 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let head = c.last_seq().await;
    while seen.last().unwrap().seq < head {
        seen.push(resumed.message().await.unwrap().unwrap());
    }
    assert_eq!(seen, c.events().await, "resumed watch equals the whole log");

    // The CLI's watch prints one JSON event per line, filtered to the transaction.
    let mut watch = tokio::process::Command::new(support::bin("lockstep"))
        .args(["release", "watch", "T3", "--from", "1", "-o", "json"])
        .env("LOCKSTEP_COORDINATOR", c.coordinator.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut printed = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let e: serde_json::Value = serde_json::from_str(&line).unwrap();
            printed.push(e["seq"].as_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(e["transactionId"], "T3");
            if e["kind"] == "EVENT_KIND_TRANSACTION_COMMITTED" {
                return;
            }
        }
        panic!("watch ended before T3's committed event");
    };
    tokio::time::timeout(support::DEADLINE, read)
        .await
        .expect("the CLI prints T3's events");
    assert!(
        printed.windows(2).all(|w| w[0] < w[1]),
        "in order: {printed:?}"
    );
    // A new user's finding (stop 57): the watch of an ended transaction never exited.
    let exited = tokio::time::timeout(support::DEADLINE, watch.wait())
        .await
        .expect("`release watch T3` exits once T3 has ended")
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    // From after its end, it finds T3 ended and exits too (it reconnected forever).
    let after = (c.last_seq().await + 1).to_string();
    let late = tokio::process::Command::new(support::bin("lockstep"))
        .args(["release", "watch", "T3", "--from", &after])
        .env("LOCKSTEP_COORDINATOR", c.coordinator.url())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let late = tokio::time::timeout(support::DEADLINE, late)
        .await
        .expect("`release watch T3 --from` past its end exits")
        .unwrap();
    assert!(late.success(), "{late:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_a_transaction_filters_its_events_and_stops_at_its_end() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.release("T2", &["B=T2B"], 0).await;
    let mut stream = c
        .client()
        .await
        .watch_events(pb::WatchEventsRequest {
            from_seq: 1,
            transaction_id: "T1".into(),
            until_terminal: true,
            only_terminal: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        assert_eq!(e.transaction_id, "T1");
        kinds.push(e.kind);
    }
    assert_eq!(kinds.first(), Some(&(EventKind::TransactionCreated as i32)));
    assert_eq!(
        kinds.last(),
        Some(&(EventKind::TransactionCommitted as i32))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_a_transaction_that_already_ended_returns_at_once() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    // A watcher that reconnects after it saw the end (its follow-up call failed)
    // resumes past the terminal event: the stream must end, not wait forever.
    let past_the_end = c.last_seq().await + 1;
    let mut stream = c
        .client()
        .await
        .watch_events(pb::WatchEventsRequest {
            from_seq: past_the_end,
            transaction_id: "T1".into(),
            until_terminal: true,
            only_terminal: false,
        })
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(support::DEADLINE, stream.message())
        .await
        .expect("the stream ends");
    assert_eq!(next.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_only_the_outcome_streams_just_the_terminal_event() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.block("B");
    let created = c
        .client()
        .await
        .create_release(pb::CreateReleaseRequest {
            id: "T2".into(),
            components: vec![pb::Component {
                project: "B".into(),
                version: "T2B".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .client()
        .await
        .watch_events(pb::WatchEventsRequest {
            from_seq: created.first_event_seq,
            transaction_id: "T2".into(),
            until_terminal: true,
            only_terminal: true,
        })
        .await
        .unwrap()
        .into_inner();
    c.wait_state("T2", TransactionState::Preparing).await;
    c.heal("B");
    let mut got = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        got.push((e.transaction_id, e.kind));
    }
    assert_eq!(
        got,
        vec![("T2".to_string(), EventKind::TransactionCommitted as i32)],
        "one event, the outcome"
    );

    let refused = c
        .client()
        .await
        .watch_events(pb::WatchEventsRequest {
            from_seq: 1,
            transaction_id: "T2".into(),
            until_terminal: false,
            only_terminal: true,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("only_terminal:"),
        "{}",
        refused.message()
    );
}

/// Defect 2 of issue 27: `--wait` counted `--timeout` from prepare and
/// `--wait-timeout` from commit, so a release queued behind a stuck one waited over
/// ten minutes. Given T4 stuck preparing on A, when T5 (on B, which T4 holds) is
/// created with `--wait --wait-timeout 2s`, then the CLI returns after its one
/// deadline with exit 6 ("still queued", naming what it waits for), and a release that
/// is preparing when its deadline runs out exits 7; both go on on their own.
#[tokio::test(flavor = "multi_thread")]
async fn wait_has_one_deadline_from_the_call_and_says_where_the_release_stands() {
    let c = Cluster::family().await;
    c.block("A");
    let started = c
        .cli(&["release", "create", "T4", "A=T4A", "B=T4B", "C=T4C"])
        .await;
    assert_eq!(started.code, 0, "{started:?}");
    c.wait_state("T4", TransactionState::Preparing).await;

    let queued = [
        "release",
        "create",
        "T5",
        "B=T5B",
        "--wait",
        "--wait-timeout",
        "2s",
    ];
    let out = c.cli(&queued).await;
    assert_eq!(out.code, 6, "{out:?}");
    assert!(
        out.stderr.contains("still queued") && out.stderr.contains("T4"),
        "{out:?}"
    );
    let json = [
        "release",
        "create",
        "T6",
        "C=T6C",
        "--wait",
        "--wait-timeout",
        "1s",
        "-o",
        "json",
    ];
    let out = c.cli(&json).await;
    assert_eq!(out.code, 6, "{out:?}");
    assert!(
        out.stderr.contains("still queued"),
        "-o json says it on stderr too: {out:?}"
    );

    c.heal("A");
    c.wait_state("T4", TransactionState::Committed).await;
    c.wait_state("T5", TransactionState::Committed).await;
    c.wait_state("T6", TransactionState::Committed).await;

    c.block("B");
    let preparing = [
        "release",
        "create",
        "T7",
        "B=T7B",
        "--wait",
        "--wait-timeout",
        "2s",
    ];
    let out = c.cli(&preparing).await;
    assert_eq!(out.code, 7, "{out:?}");
    assert!(out.stderr.contains("still preparing"), "{out:?}");
    c.heal("B");
    c.wait_state("T7", TransactionState::Committed).await;
}

/// Review finding of stop 51: a move back is checked over its family (the projects
/// `requires` connects it to), but it held only its own projects, so a release of
/// another project of the family could go live beside it unchecked. Given T1 (A B C)
/// then T2C live and T3 (B=T3B) preparing, when T4 moves C back to T1C (which ran with
/// B at T1B, the version T3 replaces), then T4 waits for T3, and at its turn, with T3B
/// live, T1A T3B T1C never ran together: T4 is refused and nothing of it goes live.
#[tokio::test(flavor = "multi_thread")]
async fn a_move_back_waits_for_its_family_and_is_checked_again_at_its_turn() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.release("T2", &["C=T2C"], 0).await;
    c.block("B");
    let started = c.cli(&["release", "create", "T3", "B=T3B"]).await;
    assert_eq!(started.code, 0, "{started:?}");
    c.wait_state("T3", TransactionState::Preparing).await;
    let back = c
        .cli(&["release", "create", "T4", "C=T1C", "-o", "json"])
        .await;
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(
        back.json()["transaction"]["reason"],
        "waiting for T3, which holds project B"
    );
    c.heal("B");
    c.wait_state("T3", TransactionState::Committed).await;
    let t4 = c.wait_state("T4", TransactionState::Aborted).await;
    assert!(
        t4.reason.contains("while it was queued the state changed"),
        "{t4:?}"
    );
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T3B"), ("C", "T2C")])
    );
}

/// The other order of the same finding: a release of a project in a move back's
/// family waits until the move back has ended, so the move back goes live beside the
/// versions it was checked against. Given T3 moving C back to T1C and preparing, when
/// T4 releases B, then T4 waits for T3 (which holds B), and goes only after T3 commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_in_a_move_backs_family_waits_for_it() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.release("T2", &["C=T2C"], 0).await;
    c.block("C");
    let back = c.cli(&["release", "create", "T3", "C=T1C"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    c.wait_state("T3", TransactionState::Preparing).await;
    let later = c
        .cli(&["release", "create", "T4", "B=T4B", "-o", "json"])
        .await;
    assert_eq!(later.code, 0, "{later:?}");
    assert_eq!(
        later.json()["transaction"]["reason"],
        "waiting for T3, which holds project B"
    );
    c.heal("C");
    c.wait_state("T4", TransactionState::Committed).await;
    let events = c.events().await;
    let seq = |tx: &str, kind: EventKind| {
        let found = events
            .iter()
            .find(|e| e.transaction_id == tx && e.kind == kind as i32);
        found.unwrap_or_else(|| panic!("no {kind:?} for {tx}")).seq
    };
    assert!(
        seq("T3", EventKind::TransactionCommitted) < seq("T4", EventKind::PrepareStarted),
        "T4 prepared only after the move back was decided"
    );
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T4B"), ("C", "T1C")])
    );
}

/// Issue 27 (small things): `release watch` with no `--from` replayed the whole log.
/// Given T1 committed, when a watcher starts without `--from` and releases follow,
/// then the first event it prints is a new one, never T1's: it follows from now on.
#[tokio::test(flavor = "multi_thread")]
async fn release_watch_without_from_follows_from_now_on() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let head = c.last_seq().await;
    let mut watch = tokio::process::Command::new(support::bin("lockstep"))
        .args(["release", "watch", "-o", "json"])
        .env("LOCKSTEP_COORDINATOR", c.coordinator.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    // Releases follow one another until the watcher prints (it may connect late).
    let first = async {
        for n in 2.. {
            let id = format!("T{n}");
            let parts = ["A", "B", "C"].map(|p| format!("{p}={id}{p}"));
            let parts = parts.each_ref().map(|s| s.as_str());
            tokio::select! {
                line = lines.next_line() => return line.unwrap().unwrap(),
                _ = c.release(&id, &parts, 0) => {}
            }
        }
        unreachable!()
    };
    let line = tokio::time::timeout(support::DEADLINE, first)
        .await
        .expect("the watcher prints the new releases' events");
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    let seq: u64 = e["seq"].as_str().unwrap().parse().unwrap();
    assert!(seq > head, "not the past (head was {head}): {line}");
}

/// `wait` on CreateRelease (stop 44): one call answers with the outcome. Given A's
/// Prepare held, when T1 is created with `wait`, then the call has not answered while
/// T1 prepares, and once A goes on it answers with T1's COMMITTED event, whose
/// checkpoint is the live one and whose versions the agents run. A refused release
/// answers with its ABORTED event naming the refusal, and a retry of the ended T1
/// answers at once with its outcome from the record (`seq` 0).
#[tokio::test(flavor = "multi_thread")]
async fn create_release_with_wait_answers_with_the_outcome() {
    let c = Cluster::family().await;
    c.block("A");
    let client = c.client().await;
    let waiting = tokio::spawn(create_waiting(client, "T1", &["A=T1A", "B=T1B", "C=T1C"]));
    c.wait_state("T1", TransactionState::Preparing).await;
    assert!(!waiting.is_finished(), "answered before T1 ended");
    c.heal("A");
    let answer = waiting.await.unwrap().unwrap();
    let ended = answer.ended.expect("the outcome");
    assert_eq!(ended.transaction_id, "T1");
    assert_eq!(ended.kind, EventKind::TransactionCommitted as i32);
    let live = c.live_state().await.checkpoint.unwrap();
    assert_eq!(ended.revision, live.revision, "{ended:?}");
    assert!(ended.seq >= answer.first_event_seq, "{ended:?}");
    let t1 = Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")]);
    assert_eq!(c.live(), t1);

    c.fail("B", "disk full");
    let refused = create_waiting(c.client().await, "T2", &["B=T2B"]).await;
    let ended = refused.unwrap().ended.expect("the outcome");
    assert_eq!(ended.kind, EventKind::TransactionAborted as i32);
    assert!(ended.message.contains("disk full"), "{ended:?}");
    assert_eq!(c.live(), t1, "nothing of T2 live");

    let retry = create_waiting(c.client().await, "T1", &["A=T1A", "B=T1B", "C=T1C"]);
    let retry = retry.await.unwrap();
    assert!(!retry.created);
    let ended = retry.ended.expect("the outcome");
    assert_eq!(ended.kind, EventKind::TransactionCommitted as i32);
    assert_eq!((ended.seq, ended.revision), (0, live.revision));

    // Without an id, a call cut while it waits would leave nothing to follow.
    let before = c.last_seq().await;
    let refused = create_waiting(c.client().await, "", &["C=T3C"])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("id: wait needs"),
        "{refused:?}"
    );
    assert_eq!(c.last_seq().await, before, "nothing written");
}

/// The transaction never depends on the waiting call: given B's Prepare held, when a
/// CreateRelease with `wait` times out on the caller's side, then the release still
/// commits once B goes on, and every agent runs it.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_create_that_times_out_leaves_the_release_running() {
    let c = Cluster::family().await;
    c.block("B");
    let mut request = tonic::Request::new(release_request("T1", &["B=T1B", "C=T1C"]));
    request.set_timeout(std::time::Duration::from_millis(500));
    let cut = c.client().await.create_release(request).await.unwrap_err();
    assert!(
        matches!(
            cut.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{cut:?}"
    );
    c.heal("B");
    c.wait_state("T1", TransactionState::Committed).await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", ""), ("B", "T1B"), ("C", "T1C")])
    );
}

/// A coordinator that takes calls and never answers (paused with SIGSTOP: its socket
/// still accepts) fails each command after `--call-timeout` with exit 3, instead of
/// hanging it until CI's own limit; a wait too, before its `--wait-timeout`. Once it
/// answers again, repeating the create with its id makes the release, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_that_never_answers_fails_the_command_after_its_call_timeout() {
    let c = Cluster::family().await;
    let quick = [("LOCKSTEP_CALL_TIMEOUT", "2s")];
    c.coordinator.pause();
    let listed = c.cli_with(&["project", "list"], &quick).await;
    let create = ["release", "create", "T1", "A=T1A", "B=T1B", "C=T1C"];
    let waited = [&create[..], &["--wait", "--wait-timeout", "10m"]].concat();
    let created = c.cli_with(&waited, &quick).await;
    c.coordinator.resume();
    for out in [&listed, &created] {
        assert_eq!(out.code, 3, "{out:?}");
        assert!(
            out.stderr.contains("did not answer within --call-timeout"),
            "{out:?}"
        );
    }
    assert_eq!(c.cli_with(&["project", "list"], &quick).await.code, 0);
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
    let list = c.cli(&["release", "list", "-o", "json"]).await.json();
    assert_eq!(
        list["transactions"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
}

fn release_request(id: &str, components: &[&str]) -> pb::CreateReleaseRequest {
    let components = components
        .iter()
        .map(|c| {
            let (project, version) = c.split_once('=').unwrap();
            pb::Component {
                project: project.into(),
                version: version.into(),
                ..Default::default()
            }
        })
        .collect();
    pb::CreateReleaseRequest {
        id: id.into(),
        components,
        wait: true,
        ..Default::default()
    }
}

async fn create_waiting(
    mut client: pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    id: &str,
    components: &[&str],
) -> Result<pb::CreateTransactionResponse, tonic::Status> {
    let request = release_request(id, components);
    Ok(client.create_release(request).await?.into_inner())
}

/// Review finding of stop 58: who a new transaction waits for was the holders of its
/// projects only, although the queue is first come, first served: behind a waiting
/// transaction that wants one of its projects it waits too. Given T4 holding A (and
/// B, C: the family) and W1 of A and D queued behind it, when W2 of D is created, then
/// its dry run, its answer and a repeat of the same create all name W1, as its
/// reason does.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_queued_behind_a_waiting_one_names_it_everywhere() {
    let mut c = Cluster::family().await;
    c.add_agent("D").await;
    c.register("D", &[]).await;
    c.block("A");
    let out = c
        .cli(&["release", "create", "T4", "A=T4A", "B=T4B", "C=T4C"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    c.wait_state("T4", TransactionState::Preparing).await;
    let w1 = [
        "release", "create", "W1", "A=W1A", "B=W1B", "C=W1C", "D=W1D",
    ];
    assert_eq!(c.cli(&w1).await.code, 0);

    let w2 = ["release", "create", "W2", "D=W2D", "-o", "json"];
    let dry = c.cli(&[&w2[..], &["--dry-run"]].concat()).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(dry.json()["waitsFor"], serde_json::json!(["W1"]), "{dry:?}");
    for attempt in ["create", "repeat"] {
        let out = c.cli(&w2).await;
        assert_eq!(out.code, 0, "{attempt}: {out:?}");
        let json = out.json();
        assert_eq!(
            json["plan"]["waitsFor"],
            serde_json::json!(["W1"]),
            "{attempt}: {json}"
        );
        assert_eq!(
            json["transaction"]["reason"],
            "queued behind W1, which also waits for project D"
        );
    }
    c.heal("A");
    c.wait_state("W2", TransactionState::Committed).await;
}
