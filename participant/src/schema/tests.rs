//! The schema side against a real SQLite file: what Commit and Abort say when the
//! database no longer holds the record of what was staged.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

/// A SQLite schema in `dir`, with `0001_items` staged for T1 (reversible: applied,
/// with its tx row), and what the agent records with its vote.
async fn staged_t1(dir: &Path) -> (Schema, SchemaStaged) {
    let url = format!("sqlite://{}", dir.join("db.sqlite").display());
    let schema = Schema::open(&url, Mode::Reversible, "B").await.unwrap();
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("0001_items.up.sql"),
        "CREATE TABLE items (x INTEGER);",
    )
    .unwrap();
    std::fs::write(migrations.join("0001_items.down.sql"), "DROP TABLE items;").unwrap();
    let staged = schema
        .stage("T1", Some(&migrations), None, false)
        .await
        .unwrap();
    (schema, staged)
}

async fn run(schema: &Schema, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&schema.pool)
        .await
        .unwrap();
}

/// Review finding of stop 56: with no tx row for a transaction, Commit and Abort
/// answered "done" whatever the schema was, so an Abort that undid nothing (its row
/// read from an empty copy of the table) was recorded aborted. Given T1 staged and its
/// row gone: with the schema restored to before T1 by hand, Commit is refused and Abort
/// holds; with the migration still applied, Abort is refused and Commit holds.
#[tokio::test]
async fn without_its_row_an_outcome_is_recorded_only_if_the_schema_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, staged) = staged_t1(dir.path()).await;
    run(&schema, "DELETE FROM lockstep_schema_tx").await;
    let refused = schema.abort("T1", Some(&staged)).await.unwrap_err();
    assert!(
        refused.0.contains("changed outside Lockstep"),
        "{refused:?}"
    );
    schema.commit("T1", Some(&staged)).await.unwrap();

    run(
        &schema,
        "DROP TABLE items; DELETE FROM lockstep_schema_history",
    )
    .await;
    let refused = schema.commit("T1", Some(&staged)).await.unwrap_err();
    assert!(
        refused.0.contains("version 0 where committed needs 1"),
        "{refused:?}"
    );
    schema.abort("T1", Some(&staged)).await.unwrap();
    schema.abort("T1", None).await.unwrap();
}
