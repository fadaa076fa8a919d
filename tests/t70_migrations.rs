//! Database migrations staged reversibly inside Prepare, against real databases: SQLite
//! files and a private PostgreSQL cluster, in `reversible` and `postgres-2pc` modes.
//! Schemas are compared as full dumps (`pg_dump --schema-only`, `sqlite_master`).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use lockstep::pb;
use support::{Cluster, pg::Postgres, wait_for};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sqlite,
    PgReversible,
    Pg2pc,
}

/// A coordinator and agents A (requires B, C), B and C, each with its own database.
struct Stack {
    c: Cluster,
    pg: Option<Postgres>,
    urls: BTreeMap<String, String>,
}

const PROJECTS: [&str; 3] = ["A", "B", "C"];

impl Stack {
    async fn new(kind: Kind) -> Self {
        Self::with_conf(kind, "").await
    }

    /// A stack whose PostgreSQL runs with `conf` added to its `postgresql.conf`.
    async fn with_conf(kind: Kind, conf: &str) -> Self {
        let mut c = Cluster::new().await;
        let pg = (kind != Kind::Sqlite).then(|| Postgres::start_with(conf));
        let mut urls = BTreeMap::new();
        for p in ["B", "C", "A"] {
            let url = match &pg {
                None => format!(
                    "sqlite://{}",
                    c.dir.path().join(format!("{p}.db")).display()
                ),
                Some(pg) => {
                    pg.create_database(&p.to_lowercase()).await;
                    pg.url(&p.to_lowercase())
                }
            };
            let mode = if kind == Kind::Pg2pc {
                "postgres-2pc"
            } else {
                "reversible"
            };
            c.add_agent_with(
                p,
                &[
                    "--database".into(),
                    url.clone(),
                    "--migration-mode".into(),
                    mode.into(),
                ],
            )
            .await;
            c.register(p, if p == "A" { &["B", "C"] } else { &[] })
                .await;
            urls.insert(p.to_string(), url);
            // Reading the status creates Lockstep's own tables, so "before" dumps
            // already contain them.
            c.agent(p).status().await;
        }
        Stack { c, pg, urls }
    }

    async fn dump(&self, project: &str) -> String {
        match &self.pg {
            Some(pg) => pg.schema_dump(&project.to_lowercase()),
            None => {
                use sqlx::Connection;
                let mut conn = sqlx::SqliteConnection::connect(&self.urls[project])
                    .await
                    .unwrap();
                let rows: Vec<(String, String, Option<String>)> =
                    sqlx::query_as("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                format!("{rows:#?}")
            }
        }
    }

    async fn dumps(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for p in PROJECTS {
            out.insert(p.to_string(), self.dump(p).await);
        }
        out
    }

    /// Writes an artifact for `project` at `version` shipping `files` in `migrations/`;
    /// returns the `--artifact P=PATH` value.
    fn ship(&self, project: &str, version: &str, files: &[(String, String)]) -> String {
        let dir = self
            .c
            .dir
            .path()
            .join("artifacts")
            .join(format!("{project}-{version}"));
        std::fs::create_dir_all(dir.join("migrations")).unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join("migrations").join(name), text).unwrap();
        }
        format!("{project}={}", dir.display())
    }

    /// Releases `id`, every project at `<id><project>` with migrations 1..=upto.
    async fn release(&self, id: &str, upto: u32, expect: i32) -> support::Cli {
        let mut args: Vec<String> = vec!["release".into(), "create".into(), id.into()];
        for p in PROJECTS {
            args.push(format!("{p}={id}{p}"));
            args.push("--artifact".into());
            args.push(self.ship(p, &format!("{id}{p}"), &standard(p, upto)));
        }
        args.push("--wait".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.c.cli(&args).await;
        assert_eq!(out.code, expect, "{out:?}");
        out
    }

    async fn schema_versions(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for p in PROJECTS {
            out.push(self.c.agent(p).status().await.schema.unwrap().version);
        }
        out
    }

    async fn prepared_gids(&self) -> Vec<String> {
        match &self.pg {
            Some(pg) => pg.prepared_gids().await,
            None => Vec::new(),
        }
    }
}

/// Migration `n` of `project`, as (file, script) pairs for up and down.
fn migration(project: &str, n: u32) -> Vec<(String, String)> {
    let p = project.to_lowercase();
    let (name, up, down) = match n {
        1 => (
            "create_items",
            format!("CREATE TABLE {p}_items (id INTEGER PRIMARY KEY, name TEXT);"),
            format!("DROP TABLE {p}_items;"),
        ),
        2 => (
            "index_names",
            format!("CREATE INDEX {p}_items_name ON {p}_items (name);"),
            format!("DROP INDEX {p}_items_name;"),
        ),
        3 => (
            "add_notes",
            format!("CREATE TABLE {p}_notes (id INTEGER PRIMARY KEY, body TEXT);"),
            format!("DROP TABLE {p}_notes;"),
        ),
        _ => unreachable!(),
    };
    vec![
        (format!("{n:04}_{name}.up.sql"), up),
        (format!("{n:04}_{name}.down.sql"), down),
    ]
}

fn standard(project: &str, upto: u32) -> Vec<(String, String)> {
    (1..=upto).flat_map(|n| migration(project, n)).collect()
}

macro_rules! for_each_database {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite_reversible() { super::$scenario(super::Kind::Sqlite).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres_reversible() { super::$scenario(super::Kind::PgReversible).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres_2pc() { super::$scenario(super::Kind::Pg2pc).await }
        }
    )*};
}

macro_rules! for_each_postgres {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres_reversible() { super::$scenario(super::Kind::PgReversible).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres_2pc() { super::$scenario(super::Kind::Pg2pc).await }
        }
    )*};
}

for_each_database!(
    when_every_migration_succeeds_every_schema_moves_and_the_live_state_shows_it,
    when_c_fails_to_migrate_every_schema_stays_exactly_as_it_was,
    a_revert_runs_the_stored_downs_and_restores_the_earlier_schema_exactly,
    an_agent_killed_after_voting_prepared_applies_the_decision_to_its_schema,
    every_refusal_names_its_file_and_leaves_nothing_applied,
    a_script_that_ends_the_transaction_is_refused_and_nothing_is_applied,
    a_crash_between_the_database_commit_and_the_prepared_record_is_undone_on_restart,
    an_agent_that_lost_its_data_directory_mid_staging_undoes_what_it_staged_when_aborted,
    a_revert_to_a_build_without_migrations_restores_the_schema_it_was_live_with,
    an_unreachable_database_is_a_refusal_not_a_crash,
);

async fn when_every_migration_succeeds_every_schema_moves_and_the_live_state_shows_it(kind: Kind) {
    let s = Stack::new(kind).await;
    s.release("T1", 1, 0).await;
    assert_eq!(s.schema_versions().await, [1, 1, 1]);

    // The dry run shows the files each participant would run, in order.
    let mut dry: Vec<String> = vec!["release".into(), "create".into(), "T2".into()];
    for p in PROJECTS {
        dry.push(format!("{p}=T2{p}"));
        dry.push("--artifact".into());
        dry.push(s.ship(p, &format!("T2{p}"), &standard(p, 3)));
    }
    dry.extend(["--dry-run".into(), "-o".into(), "json".into()]);
    let plan =
        s.c.cli(&dry.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .json();
    assert_eq!(
        plan["changes"][0]["migrations"],
        serde_json::json!(["0002_index_names.up.sql", "0003_add_notes.up.sql"])
    );
    assert_eq!(plan["changes"][0]["toSchema"]["version"], "3");

    s.release("T2", 3, 0).await;

    assert_eq!(s.schema_versions().await, [3, 3, 3]);
    for p in PROJECTS {
        let dump = s.dump(p).await;
        assert!(
            dump.contains(&format!("{}_notes", p.to_lowercase())),
            "{p}: {dump}"
        );
    }
    let live = s.c.cli(&["live", "-o", "json"]).await.json();
    for v in live["checkpoint"]["versions"].as_array().unwrap() {
        assert_eq!(
            v["schema"]["version"], "3",
            "schema beside app version: {v}"
        );
        assert_eq!(v["schema"]["name"], "add_notes");
    }
    assert!(s.prepared_gids().await.is_empty());
}

async fn when_c_fails_to_migrate_every_schema_stays_exactly_as_it_was(kind: Kind) {
    let s = Stack::new(kind).await;
    s.release("T1", 1, 0).await;
    let before = s.dumps().await;

    let mut args: Vec<String> = vec!["release".into(), "create".into(), "T2".into()];
    for p in PROJECTS {
        let mut files = standard(p, 2);
        if p == "C" {
            files[2].1 = "CREATE INDEX c_broken ON no_such_table (name);".into();
        }
        args.push(format!("{p}=T2{p}"));
        args.push("--artifact".into());
        args.push(s.ship(p, &format!("T2{p}"), &files));
    }
    args.push("--wait".into());
    let out =
        s.c.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("migrations/0002_index_names.up.sql failed")
            && out.stdout.contains("no_such_table"),
        "{out:?}"
    );
    assert_eq!(
        s.dumps().await,
        before,
        "A's, B's and C's schemas are exactly as before"
    );
    assert_eq!(s.schema_versions().await, [1, 1, 1]);
    assert!(
        s.prepared_gids().await.is_empty(),
        "no prepared transaction left behind"
    );
}

async fn a_revert_runs_the_stored_downs_and_restores_the_earlier_schema_exactly(kind: Kind) {
    let s = Stack::new(kind).await;
    s.release("T1", 1, 0).await;
    let after_t1 = s.dumps().await;
    s.release("T2", 3, 0).await;
    assert_ne!(s.dumps().await, after_t1);

    // T1's artifacts ship only migration 1: the downs of 2 and 3 come from the history.
    let out = s.c.cli(&["revert", "T2", "--wait"]).await;

    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(s.dumps().await, after_t1, "exactly the schema T1 had");
    assert_eq!(s.schema_versions().await, [1, 1, 1]);
    assert_eq!(
        s.c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
}

/// T1 (schema 1) live, then T2 (schema 2) created without waiting while B's Prepare is
/// held, until A has voted PREPARED on it.
async fn t2_with_a_prepared(kind: Kind) -> Stack {
    t2_with_a_prepared_on(Stack::new(kind).await).await
}

/// [`t2_with_a_prepared`] on a stack of the caller's.
async fn t2_with_a_prepared_on(s: Stack) -> Stack {
    s.release("T1", 1, 0).await;
    s.c.block("B");
    let mut args: Vec<String> = vec!["release".into(), "create".into(), "T2".into()];
    for p in PROJECTS {
        args.push(format!("{p}=T2{p}"));
        args.push("--artifact".into());
        args.push(s.ship(p, &format!("T2{p}"), &standard(p, 2)));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(s.c.cli(&args).await.code, 0);
    wait_for("A to vote PREPARED", || async {
        let t = s.c.transaction("T2").await;
        t.participants
            .iter()
            .any(|p| p.project == "A" && p.vote == pb::Vote::Prepared as i32)
            .then_some(())
    })
    .await;
    s
}

/// Lets B prepare T2 and waits until T2 has committed with every schema at 2.
async fn heal_and_commit_t2(s: &Stack) {
    s.c.heal("B");
    s.c.wait_state("T2", pb::TransactionState::Committed).await;
    wait_for("A's schema at 2", || async {
        (s.schema_versions().await == [2, 2, 2]).then_some(())
    })
    .await;
    assert!(s.dump("A").await.contains("a_items_name"));
}

async fn an_agent_killed_after_voting_prepared_applies_the_decision_to_its_schema(kind: Kind) {
    let mut s = t2_with_a_prepared(kind).await;

    s.c.agent_mut("A").server.kill9().await;
    if kind == Kind::Pg2pc {
        let pg = s.pg.as_ref().unwrap();
        assert!(
            pg.prepared_gids()
                .await
                .contains(&"lockstep:A:T2".to_string())
        );
        pg.restart();
        assert!(
            pg.prepared_gids()
                .await
                .contains(&"lockstep:A:T2".to_string()),
            "survives a PostgreSQL crash"
        );
    }
    s.c.agent_mut("A").server.restart().await;
    s.c.heal("B");

    s.c.wait_state("T2", pb::TransactionState::Committed).await;
    assert_eq!(s.schema_versions().await, [2, 2, 2]);
    assert!(s.dump("A").await.contains("a_items_name"));
    assert!(s.prepared_gids().await.is_empty());
}

/// Review finding of stop 56: an agent in `postgres-2pc` mode restarted in the default
/// `reversible` mode (an operator forgot the flag) while a migration was prepared left
/// that prepared transaction unresolved for ever, holding its locks: its Commit and
/// Abort looked for prepared transactions only in `postgres-2pc` mode. Given A killed
/// after voting PREPARED on T2 (its migration held in a prepared transaction), when it
/// restarts in `reversible` mode and T2 commits, then A's schema moves to 2 and no
/// prepared transaction is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_2pc_agent_restarted_in_reversible_mode_still_resolves_its_prepared_transaction() {
    let mut s = t2_with_a_prepared(Kind::Pg2pc).await;
    let agent = &mut s.c.agent_mut("A").server;
    agent
        .restart_with_flag("--migration-mode", "reversible")
        .await;
    heal_and_commit_t2(&s).await;
    assert_eq!(s.prepared_gids().await, Vec::<String>::new());
}

async fn every_refusal_names_its_file_and_leaves_nothing_applied(kind: Kind) {
    let s = Stack::new(kind).await;
    let empty = s.dumps().await;
    let release = |id: &str, files: Vec<(String, String)>| {
        let artifact = s.ship("B", &format!("{id}B"), &files);
        let id = id.to_string();
        let c = &s.c;
        async move {
            c.cli(&[
                "release",
                "create",
                &id,
                &format!("B={id}B"),
                "--artifact",
                &artifact,
                "--wait",
            ])
            .await
        }
    };

    let mut no_down = standard("B", 1);
    no_down.retain(|(name, _)| !name.ends_with(".down.sql"));
    let out = release("R1", no_down).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("0001_create_items.up.sql has no 0001_create_items.down.sql"),
        "{out:?}"
    );
    assert_eq!(s.dumps().await, empty);

    assert_eq!(release("R2", standard("B", 1)).await.code, 0);
    let after_one = s.dumps().await;

    let mut edited = standard("B", 2);
    edited[0].1.push_str(" -- edited after release");
    let out = release("R3", edited).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("0001_create_items.up.sql changed after it was applied"),
        "{out:?}"
    );
    assert_eq!(s.dumps().await, after_one);

    let mut skip_two = standard("B", 1);
    skip_two.extend(migration("B", 3));
    assert_eq!(release("R4", skip_two).await.code, 0);
    let after_three = s.dumps().await;
    let out = release("R5", standard("B", 2)).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("unknown target schema version 2"),
        "{out:?}"
    );
    assert_eq!(s.dumps().await, after_three);

    let mut bad_sql = standard("B", 1);
    bad_sql.extend(migration("B", 3));
    bad_sql.push((
        "0004_broken.up.sql".into(),
        "CREATE INDEX b_x ON b_missing (x);".into(),
    ));
    bad_sql.push(("0004_broken.down.sql".into(), "DROP INDEX b_x;".into()));
    let out = release("R6", bad_sql).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("migrations/0004_broken.up.sql failed")
            && out.stdout.contains("b_missing"),
        "{out:?}"
    );
    assert_eq!(s.dumps().await, after_three);
    assert!(
        s.prepared_gids().await.is_empty(),
        "{kind:?}: no prepared transaction left"
    );
}

/// Review finding of stop 53: every script of a release runs in one database
/// transaction of the agent's, and a script that ended it on its own (a `COMMIT` at its
/// end, as in a hand-written `BEGIN; ... COMMIT;` migration) committed its work outside
/// it: when a later script then failed, the release was refused with the schema moved.
/// Given B's release shipping 0001 ending in COMMIT and 0002 broken, when it is
/// released, then it is refused naming 0001's file and line, and every schema is
/// exactly as before; a function or trigger whose body holds BEGIN ... END is not
/// mistaken for one, and goes live.
async fn a_script_that_ends_the_transaction_is_refused_and_nothing_is_applied(kind: Kind) {
    let s = Stack::new(kind).await;
    let before = s.dumps().await;
    let release = |id: &str, files: Vec<(String, String)>| {
        let artifact = s.ship("B", &format!("{id}B"), &files);
        let id = id.to_string();
        let c = &s.c;
        async move {
            let component = format!("B={id}B");
            let args = [
                "release",
                "create",
                &id,
                &component,
                "--artifact",
                &artifact,
                "--wait",
            ];
            c.cli(&args).await
        }
    };
    let file = |name: &str, text: &str| (name.to_string(), text.to_string());
    let committing = vec![
        file(
            "0001_wrapped.up.sql",
            "CREATE TABLE wrapped (x INTEGER);\nCOMMIT;\n",
        ),
        file("0001_wrapped.down.sql", "DROP TABLE wrapped;"),
        file("0002_broken.up.sql", "CREATE INDEX b_x ON b_missing (x);"),
        file("0002_broken.down.sql", "DROP INDEX b_x;"),
    ];
    let out = release("R1", committing).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("migrations/0001_wrapped.up.sql: line 2: COMMIT controls the transaction"),
        "{out:?}"
    );
    assert_eq!(s.dumps().await, before, "{kind:?}: nothing applied");

    let body = match kind {
        Kind::Sqlite => {
            "CREATE TABLE counted (n INTEGER);\nCREATE TRIGGER counting AFTER INSERT ON counted BEGIN\n  UPDATE counted SET n = CASE WHEN n > 0 THEN n ELSE 0 END;\nEND;\n"
        }
        _ => {
            "CREATE FUNCTION counting() RETURNS trigger AS $$\nBEGIN\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n"
        }
    };
    let down = match kind {
        Kind::Sqlite => "DROP TRIGGER counting; DROP TABLE counted;",
        _ => "DROP FUNCTION counting();",
    };
    let out = release(
        "R2",
        vec![
            file("0001_body.up.sql", body),
            file("0001_body.down.sql", down),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_ne!(s.dumps().await, before, "{kind:?}: the body went live");
}

/// T1 (schema 1) live, then A's agent killed while staging T2 (schema 2): after its
/// database committed T2's migration and before its PREPARED record (crash point
/// `agent-before-prepared-record`). The stack, and the schemas before T2.
async fn a_killed_mid_staging(kind: Kind) -> (Stack, BTreeMap<String, String>) {
    let mut s = Stack::new(kind).await;
    s.release("T1", 1, 0).await;
    let before = s.dumps().await;
    let crash = vec![(
        "LOCKSTEP_CRASH_AT".to_string(),
        "agent-before-prepared-record".to_string(),
    )];
    s.c.agent_mut("A").server.restart_with(crash).await;
    let mut args: Vec<String> = vec!["release".into(), "create".into(), "T2".into()];
    for p in PROJECTS {
        args.push(format!("{p}=T2{p}"));
        args.push("--artifact".into());
        args.push(s.ship(p, &format!("T2{p}"), &standard(p, 2)));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(s.c.cli(&args).await.code, 0);
    s.c.agent_mut("A").server.exited().await;
    (s, before)
}

async fn a_crash_between_the_database_commit_and_the_prepared_record_is_undone_on_restart(
    kind: Kind,
) {
    let (mut s, before) = a_killed_mid_staging(kind).await;

    // A died inside the window: its database holds T2's change, its ledger no vote.
    match kind {
        Kind::Pg2pc => assert!(
            s.prepared_gids()
                .await
                .contains(&"lockstep:A:T2".to_string())
        ),
        _ => assert_ne!(
            s.dump("A").await,
            before["A"],
            "the migration is committed in A's database"
        ),
    }

    s.c.agent_mut("A").server.restart_with(Vec::new()).await;

    let t = s.c.wait_state("T2", pb::TransactionState::Aborted).await;
    assert!(t.reason.contains("restarted before voting"), "{}", t.reason);
    assert_eq!(
        s.dumps().await,
        before,
        "the database row told A what to undo"
    );
    assert_eq!(s.schema_versions().await, [1, 1, 1]);
    assert!(s.prepared_gids().await.is_empty());
}

/// Review finding of stop 53: an agent killed mid-staging undoes that staging at its
/// restart, and exited when the undo failed (its database down), crash-looping until
/// the database came back. Given A killed after its migration committed and before its
/// PREPARED record, when A restarts with PostgreSQL down, then it starts; once
/// PostgreSQL is back its staging is undone (T2 aborted, every schema as before), and
/// the next release commits.
async fn an_agent_whose_undo_fails_at_restart_starts_and_undoes_later(kind: Kind) {
    let (mut s, before) = a_killed_mid_staging(kind).await;

    s.pg.as_ref().unwrap().crash();
    s.c.agent_mut("A").server.restart_with(Vec::new()).await;
    s.pg.as_ref().unwrap().start_again();

    s.c.wait_state("T2", pb::TransactionState::Aborted).await;
    assert_eq!(s.dumps().await, before, "{kind:?}: A's staging undone");
    assert!(s.prepared_gids().await.is_empty());
    s.release("T3", 2, 0).await;
    assert_eq!(s.schema_versions().await, [2, 2, 2]);
}

for_each_postgres!(an_agent_whose_undo_fails_at_restart_starts_and_undoes_later);

/// Review finding of stop 56: a migration's `SET search_path` outlived its
/// transaction on the pooled connection it ran on. There Lockstep's `CREATE TABLE IF
/// NOT EXISTS` made empty copies of its own tables in the script's schema, so that
/// connection read no history (schema version 0) and no tx row (an Abort undid nothing
/// and was recorded all the same). Given T1 live, when T2's B migration moves into
/// schema `app` and T2 commits, then every read of B's schema version, as many as the
/// pool has connections and more, says 2, and `app` holds only B's table; and when
/// T3's C migration fails after B's ran, every schema is exactly as after T2.
async fn a_migration_that_sets_search_path_leaves_lockstep_s_tables_alone(kind: Kind) {
    let s = Stack::new(kind).await;
    s.release("T1", 1, 0).await;
    let release = |id: &str, upto: u32, broken_c: bool| {
        let mut args: Vec<String> = vec!["release".into(), "create".into(), id.into()];
        for p in PROJECTS {
            let mut files = standard(p, upto);
            if p == "B" && upto == 2 {
                files[2].1 = "CREATE SCHEMA app;\nSET search_path TO app, public;\nCREATE TABLE b_side (x INTEGER);".into();
                files[3].1 = "DROP TABLE app.b_side;\nDROP SCHEMA app;".into();
            }
            if p == "B" && upto == 3 {
                files[4].1 =
                    "SET search_path TO app, public;\nCREATE TABLE b_more (x INTEGER);".into();
                files[5].1 = "DROP TABLE app.b_more;".into();
            }
            if p == "C" && broken_c {
                files[upto as usize * 2 - 2].1 =
                    "CREATE INDEX c_broken ON no_such_table (name);".into();
            }
            args.push(format!("{p}={id}{p}"));
            args.push("--artifact".into());
            args.push(s.ship(p, &format!("{id}{p}"), &files));
        }
        args.push("--wait".into());
        let c = &s.c;
        async move {
            c.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .await
        }
    };
    let out = release("T2", 2, false).await;
    assert_eq!(out.code, 0, "{out:?}");
    for read in 0..8 {
        assert_eq!(
            s.schema_versions().await,
            [2, 2, 2],
            "{kind:?}: read {read}"
        );
    }
    let after_t2 = s.dumps().await;
    assert!(
        !after_t2["B"].contains("app.lockstep_schema"),
        "{}",
        after_t2["B"]
    );
    let out = release("T3", 3, true).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        s.dumps().await,
        after_t2,
        "{kind:?}: every schema as after T2"
    );
    assert_eq!(s.schema_versions().await, [2, 2, 2]);
}

for_each_postgres!(a_migration_that_sets_search_path_leaves_lockstep_s_tables_alone);

async fn an_agent_that_lost_its_data_directory_mid_staging_undoes_what_it_staged_when_aborted(
    kind: Kind,
) {
    let mut s = Stack::new(kind).await;
    s.release("T1", 1, 0).await;
    let before = s.dumps().await;
    let crash = vec![(
        "LOCKSTEP_CRASH_AT".to_string(),
        "agent-before-prepared-record".to_string(),
    )];
    s.c.agent_mut("A").server.restart_with(crash).await;
    let mut args: Vec<String> = vec!["release".into(), "create".into(), "T2".into()];
    for p in PROJECTS {
        args.push(format!("{p}=T2{p}"));
        args.push("--artifact".into());
        args.push(s.ship(p, &format!("T2{p}"), &standard(p, 2)));
    }
    let out =
        s.c.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
    assert_eq!(out.code, 0, "{out:?}");
    s.c.agent_mut("A").server.exited().await;
    let out =
        s.c.cli(&["release", "abort", "T2", "--reason", "A is gone"])
            .await;
    assert_eq!(out.code, 0, "{out:?}");

    // A's ledger is lost with its data directory: staged files and schema remain, and
    // no record says they belong to T2.
    std::fs::remove_dir_all(s.c.dir.path().join("agent-A")).unwrap();
    assert!(s.c.agent("A").releases().contains(&"T2A".to_string()));
    s.c.agent_mut("A").server.restart_with(Vec::new()).await;

    s.c.wait_state("T2", pb::TransactionState::Aborted).await;
    assert_eq!(
        s.dumps().await,
        before,
        "{kind:?}: every schema as after T1"
    );
    assert_eq!(s.schema_versions().await, [1, 1, 1]);
    assert_eq!(
        s.c.agent("A").releases(),
        ["T1A"],
        "T2's staged build is gone"
    );
    assert!(s.prepared_gids().await.is_empty());
}

async fn a_revert_to_a_build_without_migrations_restores_the_schema_it_was_live_with(kind: Kind) {
    let s = Stack::new(kind).await;
    // T0's builds ship no migrations/ at all: every schema stays at version 0.
    let mut args: Vec<String> = vec!["release".into(), "create".into(), "T0".into()];
    for p in PROJECTS {
        let dir = s.c.dir.path().join("artifacts").join(format!("{p}-T0{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), format!("T0{p}")).unwrap();
        args.push(format!("{p}=T0{p}"));
        args.push("--artifact".into());
        args.push(format!("{p}={}", dir.display()));
    }
    args.push("--wait".into());
    let out =
        s.c.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
    assert_eq!(out.code, 0, "{out:?}");
    let after_t0 = s.dumps().await;
    assert_eq!(s.schema_versions().await, [0, 0, 0]);
    s.release("T1", 2, 0).await;

    let out = s.c.cli(&["revert", "T1", "--wait"]).await;

    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(s.schema_versions().await, [0, 0, 0], "{kind:?}");
    assert_eq!(s.dumps().await, after_t0, "exactly the schema T0 had");
    let live = s.c.live_state().await;
    let schemas: Vec<i64> = live
        .checkpoint
        .unwrap()
        .versions
        .iter()
        .map(|v| v.schema.as_ref().map_or(-1, |s| s.version))
        .collect();
    assert_eq!(
        schemas,
        [0, 0, 0],
        "the checkpoint says where each schema is"
    );
}

async fn an_unreachable_database_is_a_refusal_not_a_crash(kind: Kind) {
    let mut c = Cluster::new().await;
    let pg = (kind != Kind::Sqlite).then(Postgres::start);
    let url = match &pg {
        None => format!("sqlite://{}/no/such/dir/b.db", c.dir.path().display()),
        Some(pg) => {
            pg.create_database("b").await;
            pg.url("b")
        }
    };
    let mode = if kind == Kind::Pg2pc {
        "postgres-2pc"
    } else {
        "reversible"
    };
    c.add_agent_with(
        "B",
        &[
            "--database".into(),
            url,
            "--migration-mode".into(),
            mode.into(),
        ],
    )
    .await;
    // Its database is unreachable from the start, so it cannot report its state.
    let url = c.agent("B").server.url();
    let add = ["project", "add", "B", "--endpoint", &url, "--unchecked"];
    assert_eq!(c.cli(&add).await.code, 0);
    if let Some(pg) = &pg {
        pg.crash();
    }
    let artifact = c.dir.path().join("b1");
    std::fs::create_dir_all(artifact.join("migrations")).unwrap();
    for (name, text) in standard("B", 1) {
        std::fs::write(artifact.join("migrations").join(name), text).unwrap();
    }
    let artifact = format!("B={}", artifact.display());

    let out = c
        .cli(&[
            "release",
            "create",
            "T1",
            "B=T1B",
            "--artifact",
            &artifact,
            "--wait",
        ])
        .await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("database unreachable"), "{out:?}");
    assert_eq!(c.agent("B").live(), None);
    if let Some(pg) = &pg {
        pg.start_again();
        let out = c
            .cli(&[
                "release",
                "create",
                "T2",
                "B=T1B",
                "--artifact",
                &artifact,
                "--wait",
            ])
            .await;
        assert_eq!(
            out.code, 0,
            "works again once the database is back: {out:?}"
        );
    }
}

/// Review finding of stop 53: a `postgres-2pc` agent asked its database for the
/// prepared transactions at start and exited when the database was down ("recovering
/// local state"), crash-looping until it came back, even with nothing open. Given T1
/// committed in postgres-2pc mode, when PostgreSQL is down and B's agent restarts,
/// then it starts, a release is refused naming the database, and once PostgreSQL is
/// back the next release commits.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_2pc_an_agent_restarted_while_its_database_is_down_starts_and_refuses() {
    let mut s = Stack::new(Kind::Pg2pc).await;
    s.release("T1", 1, 0).await;
    s.pg.as_ref().unwrap().crash();
    s.c.agent_mut("B").server.restart().await;

    let out = s.release("T2", 2, 1).await;
    assert!(out.stdout.contains("database unreachable"), "{out:?}");
    s.pg.as_ref().unwrap().start_again();
    s.release("T3", 2, 0).await;
    assert_eq!(s.schema_versions().await, [2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_2pc_without_max_prepared_transactions_is_refused_at_start_up() {
    let pg = Postgres::start_with("max_prepared_transactions = 0\n");
    pg.create_database("b").await;
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(support::bin("lockstep-agent"))
        .args([
            "--project",
            "B",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--migration-mode",
            "postgres-2pc",
            "--database",
            &pg.url("b"),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--deploy-root")
        .arg(dir.path().join("root"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_prepared_transactions = 0"), "{err}");
}

/// Backends of database `db` left inside a transaction with nothing running.
async fn idle_in_transaction(pg: &Postgres, db: &str) -> Vec<String> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres"))
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT coalesce(query, '') FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
    )
    .bind(db)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Whether a backend of database `db` is running a statement containing `text`.
async fn running(pg: &Postgres, db: &str, text: &str) -> bool {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres"))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE '%' || $2 || '%'",
    )
    .bind(db)
    .bind(text)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    n > 0
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_2pc_an_abort_during_a_migration_leaves_no_transaction_open_and_the_next_release_commits()
 {
    let s = Stack::new(Kind::Pg2pc).await;
    let pg = s.pg.as_ref().unwrap();
    s.release("T1", 1, 0).await;
    let after_t1 = s.dumps().await;

    // T2: A's second migration takes an AccessExclusiveLock, then runs for a while; C
    // holds its vote, so the Abort reaches A while that migration runs.
    s.c.block("C");
    let mut slow = standard("A", 2);
    slow[2].1 = "ALTER TABLE a_items ADD COLUMN slow TEXT; SELECT pg_sleep(2);".into();
    slow[3].1 = "ALTER TABLE a_items DROP COLUMN slow;".into();
    let mut args: Vec<String> = vec!["release".into(), "create".into(), "T2".into()];
    for (p, files) in [
        ("A", slow),
        ("B", standard("B", 1)),
        ("C", standard("C", 1)),
    ] {
        args.push(format!("{p}=T2{p}"));
        args.push("--artifact".into());
        args.push(s.ship(p, &format!("T2{p}"), &files));
    }
    let out =
        s.c.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for("A's slow migration to run", || async {
        running(pg, "a", "pg_sleep").await.then_some(())
    })
    .await;
    let out =
        s.c.cli(&["release", "abort", "T2", "--reason", "stop it"])
            .await;
    assert_eq!(out.code, 0, "{out:?}");
    s.c.wait_state("T2", pb::TransactionState::Aborted).await;
    s.c.heal("C");

    assert_eq!(
        idle_in_transaction(pg, "a").await,
        Vec::<String>::new(),
        "no backend of A's database is left idle in a transaction"
    );
    assert!(
        s.prepared_gids().await.is_empty(),
        "no prepared transaction left"
    );
    assert_eq!(
        s.dumps().await,
        after_t1,
        "every schema exactly as after T1"
    );
    s.release("T3", 2, 0).await;
    assert_eq!(s.schema_versions().await, [2, 2, 2]);
}

/// Given agents of project B in two environments whose `postgres-2pc` databases live on
/// one PostgreSQL server, and prod's B holding a prepared migration transaction (its
/// vote awaits prod's decision), when the default environment's B restarts, then it
/// starts and leaves prod's prepared transaction alone: `pg_prepared_xacts` lists the
/// whole server, and a restart rolls back only what its own database holds.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_2pc_a_restart_leaves_the_prepared_transactions_of_other_databases_alone() {
    let pg = Postgres::start();
    let mut c = Cluster::new().await;
    let flags = |db: &str| {
        vec![
            "--database".to_string(),
            pg.url(db),
            "--migration-mode".into(),
            "postgres-2pc".into(),
            "--ask-decision-after".into(),
            "1h".into(),
        ]
    };
    for db in ["dev_b", "prod_b"] {
        pg.create_database(db).await;
    }
    let (dev, prod) = (flags("dev_b"), flags("prod_b"));
    c.add_agent_with("B", &dev).await;
    c.add_env_agent_with("prod", "B", &prod).await;
    let build = c.dir.path().join("build-T9B");
    std::fs::create_dir_all(build.join("migrations")).unwrap();
    for (name, text) in standard("B", 1) {
        std::fs::write(build.join("migrations").join(name), text).unwrap();
    }
    let vote = c
        .agent("prod/B")
        .client()
        .await
        .prepare(pb::PrepareRequest {
            transaction_id: "T9".into(),
            project: "B".into(),
            environment: "prod".into(),
            version: "T9B".into(),
            artifact: build.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vote.vote, pb::Vote::Prepared as i32, "{vote:?}");
    assert_eq!(pg.prepared_gids().await, ["lockstep:B:T9"]);

    c.agent_mut("B").server.restart().await;

    assert!(c.agent("B").status().await.staged.is_empty());
    assert_eq!(
        pg.prepared_gids().await,
        ["lockstep:B:T9"],
        "prod's vote still holds"
    );
}

/// Review finding of stop 58: on Abort the agent ran its deployer's undo (the serve
/// hook's stop, the abort hook) before ROLLBACK PREPARED, so a failing hook kept the
/// prepared transaction, and the locks its migration took, for as long as the hook
/// failed: every query on the migrated table waited on a notification script. Given A
/// prepared on T2 in `postgres-2pc` mode with an abort hook that fails, when T2 is
/// aborted, then A's prepared transaction is rolled back all the same, and A's table
/// answers a query from another session.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_abort_hook_does_not_keep_the_prepared_migration_and_its_locks() {
    let mut s = t2_with_a_prepared(Kind::Pg2pc).await;
    let pg_gids = s.prepared_gids().await;
    assert!(
        pg_gids.contains(&"lockstep:A:T2".to_string()),
        "{pg_gids:?}"
    );
    let agent = &mut s.c.agent_mut("A").server;
    agent
        .restart_with_args(vec!["--abort-hook".into(), "exit 1".into()])
        .await;

    let out =
        s.c.cli(&["release", "abort", "T2", "--reason", "stop it"])
            .await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for("A's prepared migration rolled back", || async {
        let gids = s.prepared_gids().await;
        (!gids.contains(&"lockstep:A:T2".to_string())).then_some(())
    })
    .await;
    use sqlx::Connection;
    let pg = s.pg.as_ref().unwrap();
    let mut conn = sqlx::PgConnection::connect(&pg.url("a")).await.unwrap();
    sqlx::query("SET statement_timeout = '5s'")
        .execute(&mut conn)
        .await
        .unwrap();
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT count(*) FROM a_items")
        .fetch_all(&mut conn)
        .await
        .expect("A's table answers: no lock is held on it");
    assert_eq!(rows, [(0,)]);
    s.c.heal("B");
}

/// Review finding of stop 58: in `reversible` mode the migration's transaction ended
/// with a plain COMMIT, which a server (or database, or role) set to `synchronous_commit
/// = off` answers before its WAL is flushed; the agent then voted PREPARED on a schema
/// change a PostgreSQL crash could still lose, and the COMMIT found the schema "changed
/// outside Lockstep" for ever. Given such a server and A prepared on T2, when
/// PostgreSQL crashes before its WAL writer flushed, then T2 still commits with every
/// schema at 2.
#[tokio::test(flavor = "multi_thread")]
async fn a_vote_on_a_reversible_migration_survives_a_postgres_crash_with_synchronous_commit_off() {
    let conf = "synchronous_commit = off\nwal_writer_delay = 10s\n";
    let s = t2_with_a_prepared_on(Stack::with_conf(Kind::PgReversible, conf).await).await;
    s.pg.as_ref().unwrap().restart();
    heal_and_commit_t2(&s).await;
}

/// Review finding of stop 58: an ordinary release whose build ships fewer migrations
/// than are applied (built from a branch without the newest) ran the downs of the
/// missing ones at Prepare, dropping what they made, although only a move back (a
/// revert, a rollback, a forced re-activation) may run downs. Given T1 live at schema
/// 3, when T2 ships migrations up to 2 only, then T2 is refused saying why, and every
/// schema stays exactly as T1 left it.
#[tokio::test(flavor = "multi_thread")]
async fn an_ordinary_release_that_ships_fewer_migrations_than_applied_is_refused() {
    let s = Stack::new(Kind::Sqlite).await;
    s.release("T1", 3, 0).await;
    let after_t1 = s.dumps().await;

    let out = s.release("T2", 2, 1).await;

    assert!(out.stdout.contains("never runs downs"), "{out:?}");
    assert_eq!(s.schema_versions().await, [3, 3, 3]);
    assert_eq!(s.dumps().await, after_t1, "T1's schema, untouched");
    assert_eq!(
        s.c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
}

/// Review finding of stop 58 (of this stop's own change, which undid the schema first
/// and stopped there when it failed): every part of an undo is tried even when another
/// fails. Given A prepared on T2 in `reversible` mode, when PostgreSQL is down and T2
/// is aborted, then A's staged build is removed all the same; once PostgreSQL is back,
/// T2 ends ABORTED with every schema at 1.
#[tokio::test(flavor = "multi_thread")]
async fn an_abort_while_the_database_is_down_still_undoes_the_staged_build() {
    let s = t2_with_a_prepared(Kind::PgReversible).await;
    assert!(s.c.agent("A").releases().contains(&"T2A".to_string()));
    let pg = s.pg.as_ref().unwrap();
    pg.crash();

    let out =
        s.c.cli(&["release", "abort", "T2", "--reason", "database down"])
            .await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for(
        "A's staged T2A removed while the database is down",
        || async { (!s.c.agent("A").releases().contains(&"T2A".to_string())).then_some(()) },
    )
    .await;
    pg.start_again();
    s.c.heal("B");
    s.c.wait_state("T2", pb::TransactionState::Aborted).await;
    assert_eq!(s.schema_versions().await, [1, 1, 1]);
}
