//! Database migrations staged inside Prepare so that Abort restores the schema exactly
//! (PRODUCT.md, "DB migrations, staged reversibly"). SQLite and PostgreSQL, through
//! sqlx's `any` driver.
//!
//! Two modes:
//! - `reversible` (default): the plan runs in one database transaction at Prepare,
//!   together with a row in `lockstep_schema_tx` holding the plan (with every script
//!   needed to invert it). Commit marks the row committed; Abort runs the inverse plan
//!   in one transaction and marks the row aborted. The row is written in the same
//!   transaction as the change, so after a crash between the database commit and the
//!   agent's own PREPARED record, the row still says what to undo.
//! - `postgres-2pc`: the plan runs in a transaction ended by `PREPARE TRANSACTION
//!   'lockstep:<project>:<tx>'`; Commit is `COMMIT PREPARED`, Abort `ROLLBACK PREPARED`.
//!   Nothing is visible to others until Commit; locks are held until the decision.
//!
//! Every applied migration's up and down scripts are kept in `lockstep_schema_history`,
//! so a revert to an older artifact (which does not ship the newer downs) can run them.

mod control;
pub mod files;
pub mod plan;
#[cfg(test)]
mod tests;

use std::{path::Path, time::Duration};

use lockstep::pb;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, AssertSqlSafe, Connection, Row, any::AnyPoolOptions};

use crate::deployer::{DeployError, Refusal};
use files::Migration;
use plan::{Direction, SchemaPlan};

/// A schema position: the newest applied migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaPosition {
    /// Migration version (0: none applied).
    pub version: i64,
    /// Its name.
    pub name: String,
}

impl SchemaPosition {
    /// As the protocol reports it (votes, checkpoints).
    pub fn domain(&self) -> lockstep::orders::Schema {
        lockstep::orders::Schema {
            version: self.version,
            name: self.name.clone(),
        }
    }

    /// As a wire message.
    pub fn message(&self) -> pb::SchemaVersion {
        pb::SchemaVersion {
            version: self.version,
            name: self.name.clone(),
        }
    }
}

/// How migrations are staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Applied at Prepare in one transaction; Abort applies the inverse.
    Reversible,
    /// Held in a PostgreSQL prepared transaction until the decision.
    PostgresTwoPhase,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reversible" => Ok(Mode::Reversible),
            "postgres-2pc" => Ok(Mode::PostgresTwoPhase),
            _ => Err(format!("{s:?}: expected reversible or postgres-2pc")),
        }
    }
}

/// What a transaction staged in the database (recorded with the PREPARED vote).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaStaged {
    /// Position before.
    pub from: SchemaPosition,
    /// Position staged.
    pub to: SchemaPosition,
    /// Migration files run, in order.
    pub files: Vec<String>,
    /// The plan that undoes it (written before the vote, as the protocol asks).
    pub inverse: SchemaPlan,
}

/// Which database is behind the URL: its SQL dialect decides how a script's text is
/// read (quotes, comments) when it is checked for transaction control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The schema side of one project's agent.
pub struct Schema {
    pool: AnyPool,
    backend: Backend,
    mode: Mode,
    project: String,
    /// `postgres-2pc`: the transactions voted PREPARED at start, while the prepared
    /// transactions found in the database could not be judged yet (it was
    /// unreachable): judged before anything is staged, so that no transaction prepared
    /// since is taken for one never voted on.
    unjudged: tokio::sync::Mutex<Option<Vec<String>>>,
}

const HISTORY_DDL: &str = "CREATE TABLE IF NOT EXISTS lockstep_schema_history (
    project TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL,
    up_sql TEXT NOT NULL, down_sql TEXT NOT NULL, applied_by TEXT NOT NULL,
    PRIMARY KEY (project, version))";
const TX_DDL: &str = "CREATE TABLE IF NOT EXISTS lockstep_schema_tx (
    tx TEXT NOT NULL, project TEXT NOT NULL, from_version BIGINT NOT NULL, to_version BIGINT NOT NULL,
    plan TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (project, tx))";

/// Lockstep's own tables, named in the schema a migration session found itself in
/// before any script ran: a script's `SET search_path` cannot send its history rows or
/// its tx row elsewhere.
struct Names {
    history: String,
    tx: String,
}

impl Names {
    fn in_schema(schema: &str) -> Self {
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        Self {
            history: format!("{quoted}.lockstep_schema_history"),
            tx: format!("{quoted}.lockstep_schema_tx"),
        }
    }
}

fn db_err(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

/// PostgreSQL's refusal of PREPARE TRANSACTION, with what to do about the causes it
/// names (its own hint does not reach us); any other refusal as it is.
fn prepare_hint(error: &str) -> String {
    let hint = if error.contains("are disabled") || error.contains("maximum number of prepared") {
        " (raise max_prepared_transactions in postgresql.conf and restart PostgreSQL)"
    } else if error.contains("cannot PREPARE a transaction that has") {
        " (a migration staged in postgres-2pc mode cannot use temporary tables, LISTEN/NOTIFY or WITH HOLD cursors; use reversible mode for it)"
    } else {
        ""
    };
    format!("{error}{hint}")
}

/// Refuses a plan that runs downs for a change that does not move the project back:
/// an ordinary release built without the newest migrations would drop what they made.
fn forward_only(plan: &SchemaPlan, moving_back: bool) -> Result<(), Refusal> {
    if moving_back || plan.direction == Direction::Up || plan.steps.is_empty() {
        return Ok(());
    }
    Err(Refusal(format!(
        "this build's migrations end at schema version {}, below the live {}: an ordinary release never runs downs (it would run {}); ship the newer migrations with it, or move back with `lockstep revert` or `lockstep rollback`",
        plan.to.version,
        plan.from.version,
        plan.files().join(", ")
    )))
}

/// Makes every COMMIT on this PostgreSQL connection return only once it is flushed,
/// also where the server, database or role made commits asynchronous: the agent
/// votes PREPARED on a
/// `reversible` migration, and records an abort's inverse as done, right after its
/// COMMIT, so an asynchronous commit a crash can still lose would break its word.
async fn durable_commits(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    let sql = FLUSHED_COMMITS.replace("LOCAL", "false");
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(drop)
}

/// Sets `synchronous_commit` to `on` where it is `off` or `local` (LOCAL: `true` for
/// this transaction only, `false` for the session), and leaves `remote_write` and
/// `remote_apply` (which wait for more) as they are.
const FLUSHED_COMMITS: &str = "SELECT set_config('synchronous_commit', 'on', LOCAL) \
     WHERE current_setting('synchronous_commit') IN ('off', 'local')";

impl Schema {
    /// Connects (lazily: an unreachable database makes Prepare refuse, not the agent
    /// fail to start) and checks what can be checked now: the mode fits the database,
    /// and for `postgres-2pc` that `max_prepared_transactions` is above zero.
    pub async fn open(url: &str, mode: Mode, project: &str) -> Result<Self, String> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(format!(
                "--database {url:?}: expected sqlite://PATH or postgres://..."
            ));
        };
        if mode == Mode::PostgresTwoPhase && backend != Backend::Postgres {
            return Err("--migration-mode postgres-2pc needs a postgres:// database".into());
        }
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5));
        if backend == Backend::Postgres {
            options = options.after_connect(|conn, _| Box::pin(durable_commits(conn)));
        }
        let pool = options
            .connect_lazy(&url)
            .map_err(|e| format!("--database: {}", db_err(e)))?;
        let schema = Schema {
            pool,
            backend,
            mode,
            project: project.to_string(),
            unjudged: tokio::sync::Mutex::new(None),
        };
        if mode == Mode::PostgresTwoPhase {
            match schema.max_prepared_transactions().await {
                Ok(0) => {
                    return Err("--migration-mode postgres-2pc: the server has max_prepared_transactions = 0; \
                                set it above zero in postgresql.conf and restart PostgreSQL"
                        .into());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "database unreachable at start-up ({e}); Prepare will refuse until it is back"
                ),
            }
        }
        Ok(schema)
    }

    async fn max_prepared_transactions(&self) -> Result<i64, String> {
        let row = sqlx::query("SELECT CAST(setting AS BIGINT) FROM pg_settings WHERE name = 'max_prepared_transactions'")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        row.try_get::<i64, _>(0).map_err(db_err)
    }

    async fn ensure_tables(&self) -> Result<(), String> {
        for ddl in [HISTORY_DDL, TX_DDL] {
            sqlx::raw_sql(ddl)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Migrations applied for this project, oldest first, with their stored scripts.
    async fn applied(&self) -> Result<Vec<Migration>, String> {
        self.ensure_tables().await?;
        let rows = sqlx::query(
            "SELECT version, name, checksum, up_sql, down_sql FROM lockstep_schema_history WHERE project = $1 ORDER BY version",
        )
        .bind(&self.project)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get(0).map_err(db_err)?;
                let name: String = r.try_get(1).map_err(db_err)?;
                Ok(Migration {
                    stem: format!("{version:04}_{name}"),
                    version,
                    name,
                    checksum: r.try_get(2).map_err(db_err)?,
                    up: r.try_get(3).map_err(db_err)?,
                    down: Some(r.try_get(4).map_err(db_err)?),
                })
            })
            .collect()
    }

    /// The live schema position.
    pub async fn live(&self) -> Result<SchemaPosition, DeployError> {
        let applied = self
            .applied()
            .await
            .map_err(|e| DeployError(format!("database: {e}")))?;
        Ok(applied
            .last()
            .map(|m| SchemaPosition {
                version: m.version,
                name: m.name.clone(),
            })
            .unwrap_or_default())
    }

    /// The plan Prepare would run for the migrations in `shipped` (None: the version
    /// ships no `migrations/` directory, so the schema is left as it is).
    /// Only a change `moving_back` may run downs.
    pub async fn plan(
        &self,
        shipped: Option<Vec<Migration>>,
        moving_back: bool,
    ) -> Result<Option<SchemaPlan>, Refusal> {
        let Some(shipped) = shipped else {
            return Ok(None);
        };
        let applied = self
            .applied()
            .await
            .map_err(|e| Refusal(format!("database unreachable or failing: {e}")))?;
        let plan = plan::plan(&applied, &shipped).map_err(Refusal)?;
        forward_only(&plan, moving_back)?;
        Ok(Some(plan))
    }

    /// Stages the migrations shipped in `dir` for transaction `tx`; for a restore, to
    /// exactly schema version `target`. Only a change `moving_back` may run downs.
    pub async fn stage(
        &self,
        tx: &str,
        dir: Option<&Path>,
        target: Option<i64>,
        moving_back: bool,
    ) -> Result<SchemaStaged, Refusal> {
        self.judged().await.map_err(Refusal)?;
        let shipped = match dir.filter(|d| d.is_dir()) {
            Some(d) => Some(files::read_dir(d, self.backend).map_err(Refusal)?),
            None => None,
        };
        let plan = match target {
            Some(target) => self.plan_to(shipped, target).await?,
            None => self.plan_or_stay(shipped, moving_back).await?,
        };
        if !plan.is_empty() {
            match self.mode {
                Mode::Reversible => self.apply_recorded(tx, &plan, "staged").await,
                Mode::PostgresTwoPhase => self.prepare_two_phase(tx, &plan).await,
            }
            .map_err(Refusal)?;
        }
        Ok(SchemaStaged {
            from: plan.from.clone(),
            to: plan.to.clone(),
            files: plan.files(),
            inverse: plan.inverse(),
        })
    }

    /// The plan for the shipped migrations, or staying where the schema is when the
    /// version ships none.
    async fn plan_or_stay(
        &self,
        shipped: Option<Vec<Migration>>,
        moving_back: bool,
    ) -> Result<SchemaPlan, Refusal> {
        if let Some(plan) = self.plan(shipped, moving_back).await? {
            return Ok(plan);
        }
        let live = self.live().await.map_err(|e| Refusal(e.0))?;
        Ok(SchemaPlan {
            from: live.clone(),
            to: live,
            direction: Direction::Up,
            steps: Vec::new(),
        })
    }

    /// A restore's plan: exactly to schema version `target`, with the shipped
    /// migrations, or with the stored downs when the version ships none (refused when
    /// the target is above what is applied: no ups to reach it).
    async fn plan_to(
        &self,
        shipped: Option<Vec<Migration>>,
        target: i64,
    ) -> Result<SchemaPlan, Refusal> {
        let unreachable = |to: i64| {
            Refusal(format!(
                "the restored version was live with schema version {target}, but {to} is as far as it can go here (its migrations/ and the stored downs); refusing rather than leave the schema elsewhere"
            ))
        };
        let shipped = match shipped {
            Some(shipped) => shipped,
            None => {
                let applied = self
                    .applied()
                    .await
                    .map_err(|e| Refusal(format!("database: {e}")))?;
                applied
                    .into_iter()
                    .filter(|m| m.version <= target)
                    .collect()
            }
        };
        let plan = self
            .plan(Some(shipped), true)
            .await?
            .expect("a plan for shipped migrations");
        if plan.to.version != target {
            return Err(unreachable(plan.to.version));
        }
        Ok(plan)
    }

    /// A connection of its own for scripts, taken out of the pool: whatever session
    /// state a script leaves (`SET search_path`, `SET ROLE`) ends with it, and never
    /// reaches the pool's connections that read Lockstep's own tables (stop 56: on one
    /// that a script had set to `search_path TO app, public`, `CREATE TABLE IF NOT
    /// EXISTS` made empty copies of them in `app`, the tx row read as missing, and
    /// Abort did nothing). With Lockstep's tables named as this session finds them
    /// before any script runs.
    async fn session(&self) -> Result<(sqlx::AnyConnection, Names), String> {
        let unreachable = |e| format!("database unreachable: {}", db_err(e));
        let mut conn = self.pool.acquire().await.map_err(unreachable)?.detach();
        let schema: String = match self.backend {
            Backend::Sqlite => "main".into(),
            Backend::Postgres => sqlx::query("SELECT CAST(current_schema() AS TEXT)")
                .fetch_one(&mut conn)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(unreachable)?,
        };
        Ok((conn, Names::in_schema(&schema)))
    }

    /// Runs `plan` and its history changes in one transaction with the tx row.
    async fn apply_recorded(&self, tx: &str, plan: &SchemaPlan, state: &str) -> Result<(), String> {
        let (mut conn, names) = self.session().await?;
        let mut db = conn
            .begin()
            .await
            .map_err(|e| format!("database unreachable: {}", db_err(e)))?;
        run_plan(&mut db, &names, &self.project, tx, plan).await?;
        record_tx(&mut db, &names, &self.project, tx, plan, state).await?;
        self.flushed_commit(&mut db).await?;
        db.commit()
            .await
            .map_err(|e| format!("committing the migration transaction: {}", db_err(e)))?;
        let _ = conn.close().await;
        Ok(())
    }

    /// On PostgreSQL, makes the COMMIT that follows wait for its flush even if a
    /// script of this transaction set `synchronous_commit` off (the connection's own
    /// setting is [`durable_commits`]'s).
    async fn flushed_commit(
        &self,
        db: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), String> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let sql = FLUSHED_COMMITS.replace("LOCAL", "true");
        let set = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **db).await;
        set.map(drop)
            .map_err(|e| format!("committing the migration transaction: {}", db_err(e)))
    }

    fn gid(&self, tx: &str) -> String {
        format!("lockstep:{}:{tx}", self.project)
    }

    /// Runs `plan` in a transaction and leaves it prepared under the transaction's gid.
    /// An sqlx transaction, never a raw `BEGIN`: if anything fails (or the future is
    /// dropped) sqlx rolls it back before the connection is used again, so no pooled
    /// connection is left idle in a transaction holding locks.
    async fn prepare_two_phase(&self, tx: &str, plan: &SchemaPlan) -> Result<(), String> {
        let (mut conn, names) = self.session().await?;
        let mut db = conn
            .begin()
            .await
            .map_err(|e| format!("database unreachable: {}", db_err(e)))?;
        run_plan(&mut db, &names, &self.project, tx, plan).await?;
        record_tx(&mut db, &names, &self.project, tx, plan, "prepared").await?;
        let prepare = format!("PREPARE TRANSACTION '{}'", self.gid(tx));
        sqlx::raw_sql(AssertSqlSafe(prepare))
            .execute(&mut *db)
            .await
            .map_err(|e| format!("PREPARE TRANSACTION failed: {}", prepare_hint(&db_err(e))))?;
        // The transaction now belongs to the server under its gid, not to this session;
        // this COMMIT only ends sqlx's bookkeeping (PostgreSQL warns "there is no
        // transaction in progress").
        db.commit()
            .await
            .map_err(|e| format!("after PREPARE TRANSACTION: {}", db_err(e)))?;
        let _ = conn.close().await;
        Ok(())
    }

    async fn is_prepared(&self, tx: &str) -> Result<bool, String> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database()",
        )
            .bind(self.gid(tx))
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.try_get::<i64, _>(0).map_err(db_err)? > 0)
    }

    async fn tx_state(&self, tx: &str) -> Result<Option<(String, String)>, String> {
        self.ensure_tables().await?;
        let row = sqlx::query(
            "SELECT state, plan FROM lockstep_schema_tx WHERE project = $1 AND tx = $2",
        )
        .bind(&self.project)
        .bind(tx)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| Ok((r.try_get(0).map_err(db_err)?, r.try_get(1).map_err(db_err)?)))
            .transpose()
    }

    /// `COMMIT PREPARED` or `ROLLBACK PREPARED` (`how`) of `tx`'s prepared transaction
    /// if PostgreSQL holds one; whether it did.
    async fn end_prepared(&self, tx: &str, how: &str) -> Result<bool, String> {
        if self.backend != Backend::Postgres || !self.is_prepared(tx).await? {
            return Ok(false);
        }
        let sql = format!("{how} PREPARED '{}'", self.gid(tx));
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(true)
    }

    /// Makes what `tx` staged final. Idempotent. `staged`: what the agent recorded
    /// with its PREPARED vote, held against the database when its tx row is missing.
    pub async fn commit(&self, tx: &str, staged: Option<&SchemaStaged>) -> Result<(), DeployError> {
        let fail = |e: String| DeployError(format!("committing migrations of {tx}: {e}"));
        self.end_prepared(tx, "COMMIT").await.map_err(fail)?;
        match self.tx_state(tx).await.map_err(fail)? {
            None => self
                .without_row(tx, staged, "committed", |s| &s.to)
                .await
                .map_err(fail),
            Some((state, _)) if state == "aborted" => {
                Err(fail("the migrations were already undone; a COMMIT now means the coordinator and this agent disagree".into()))
            }
            Some(_) => {
                sqlx::query("UPDATE lockstep_schema_tx SET state = 'committed' WHERE project = $1 AND tx = $2")
                    .bind(&self.project)
                    .bind(tx)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| fail(db_err(e)))?;
                Ok(())
            }
        }
    }

    /// Rolls back `tx`'s prepared transaction if PostgreSQL holds one; whether it did.
    /// It holds its locks until it is ended, and ending it waits for nothing: an
    /// Abort does this before anything else can fail or wait.
    pub async fn rollback_prepared(&self, tx: &str) -> Result<bool, DeployError> {
        let ended = self.end_prepared(tx, "ROLLBACK").await;
        ended.map_err(|e| DeployError(format!("rolling back the prepared migrations of {tx}: {e}")))
    }

    /// Restores exactly the schema from before `tx` staged. Idempotent, and works from
    /// the database alone (the tx row, or the prepared gid), so it also cleans up after
    /// a crash that happened before the agent recorded what it staged.
    ///
    /// `staged`: what the agent recorded with its PREPARED vote (`None` before it),
    /// held against the database when its tx row is missing.
    pub async fn abort(&self, tx: &str, staged: Option<&SchemaStaged>) -> Result<(), DeployError> {
        let fail = |e: String| DeployError(format!("undoing migrations of {tx}: {e}"));
        // On PostgreSQL in either mode: an agent restarted in `reversible` mode may
        // still hold a prepared transaction of an earlier `postgres-2pc` run.
        if self.end_prepared(tx, "ROLLBACK").await.map_err(fail)? {
            return Ok(());
        }
        match self.tx_state(tx).await.map_err(fail)? {
            None => self
                .without_row(tx, staged, "aborted", |s| &s.from)
                .await
                .map_err(fail),
            Some((state, _)) if state == "aborted" => Ok(()),
            // A "prepared" row is visible only once its prepared transaction committed.
            Some((state, _)) if state == "committed" || state == "prepared" => {
                Err(fail("the migrations are committed".into()))
            }
            Some((_, plan)) => {
                let plan: SchemaPlan =
                    serde_json::from_str(&plan).map_err(|e| fail(format!("stored plan: {e}")))?;
                let inverse = plan.inverse();
                let (mut conn, names) = self.session().await.map_err(fail)?;
                let mut db = conn.begin().await.map_err(|e| fail(db_err(e)))?;
                run_plan(&mut db, &names, &self.project, tx, &inverse)
                    .await
                    .map_err(fail)?;
                let mark = format!(
                    "UPDATE {} SET state = 'aborted' WHERE project = $1 AND tx = $2",
                    names.tx
                );
                sqlx::query(AssertSqlSafe(mark))
                    .bind(&self.project)
                    .bind(tx)
                    .execute(&mut *db)
                    .await
                    .map_err(|e| fail(db_err(e)))?;
                self.flushed_commit(&mut db).await.map_err(fail)?;
                db.commit().await.map_err(|e| fail(db_err(e)))?;
                let _ = conn.close().await;
                Ok(())
            }
        }
    }

    /// With no tx row (nor prepared transaction) for `tx`: fine when nothing was
    /// staged, or when the schema stands where `outcome` leaves it (`at`: the staged
    /// position it must be at). Otherwise the database changed outside Lockstep (a
    /// restore, a prepared transaction rolled back by hand): refused, so the agent
    /// never records an outcome its schema does not have (stop 56: "no row" read as
    /// done, so an Abort that undid nothing was recorded ABORTED).
    async fn without_row(
        &self,
        tx: &str,
        staged: Option<&SchemaStaged>,
        outcome: &str,
        at: fn(&SchemaStaged) -> &SchemaPosition,
    ) -> Result<(), String> {
        let Some(staged) = staged.filter(|s| !s.files.is_empty()) else {
            return Ok(());
        };
        let live = self.live().await.map_err(|e| e.0)?;
        if live == *at(staged) {
            return Ok(());
        }
        Err(format!(
            "the database holds no record of {tx} (lockstep_schema_tx) and its schema is at version {} where {outcome} needs {}: it was changed outside Lockstep; not recorded {outcome}, check the database by hand",
            live.version,
            at(staged).version
        ))
    }

    /// After a restart on PostgreSQL (in either mode: a `postgres-2pc` run may precede this one): every prepared transaction of this
    /// project in this database that the agent never voted PREPARED for is rolled back
    /// (it promised nothing); another database's (the same project's agent of another
    /// environment on the same server) is left alone. Those in `prepared` stay until the coordinator's decision.
    /// With the database unreachable the agent starts all the same (Prepare refuses
    /// until it is back), and the judgement waits for the first stage.
    pub async fn recover(&self, prepared: &[String]) -> Result<(), String> {
        // In `reversible` mode too: a `postgres-2pc` run before this one may have left
        // prepared transactions (stop 56).
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        if let Err(e) = self.judge_prepared(prepared).await {
            tracing::warn!(
                "database unreachable at start-up ({e}); its prepared transactions are judged before the next Prepare"
            );
            *self.unjudged.lock().await = Some(prepared.to_vec());
        }
        Ok(())
    }

    /// Judges what [`Schema::recover`] could not, if anything (`Err`: still not).
    async fn judged(&self) -> Result<(), String> {
        let mut unjudged = self.unjudged.lock().await;
        if let Some(prepared) = unjudged.as_ref() {
            self.judge_prepared(prepared).await.map_err(|e| {
                format!("database unreachable: the prepared transactions found at start are not judged yet: {e}")
            })?;
            *unjudged = None;
        }
        Ok(())
    }

    /// Rolls back every prepared transaction of this project in this database that is
    /// not among `prepared`.
    async fn judge_prepared(&self, prepared: &[String]) -> Result<(), String> {
        let prefix = format!("lockstep:{}:", self.project);
        // The view lists the whole server: only this database's are ours to judge.
        let rows =
            sqlx::query("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        for row in rows {
            let gid: String = row.try_get(0).map_err(db_err)?;
            let Some(tx) = gid.strip_prefix(&prefix) else {
                continue;
            };
            if !prepared.iter().any(|p| p == tx) {
                tracing::info!(%tx, "rolling back a prepared migration transaction that was never voted on");
                self.abort(tx, None).await.map_err(|e| e.0)?;
            }
        }
        Ok(())
    }

    /// Migrations from `(file name, content)` pairs, checked as this database reads
    /// them.
    pub fn parse(&self, files: Vec<(String, String)>) -> Result<Vec<Migration>, String> {
        files::parse(files, self.backend)
    }

    /// The backend, for messages.
    pub fn describe(&self) -> &'static str {
        match (self.backend, self.mode) {
            (Backend::Sqlite, _) => "SQLite, reversible",
            (Backend::Postgres, Mode::Reversible) => "PostgreSQL, reversible",
            (Backend::Postgres, Mode::PostgresTwoPhase) => "PostgreSQL, postgres-2pc",
        }
    }
}

/// Runs `script` (migration `file`) on `db`, inside the caller's transaction, between a
/// savepoint and its release: a script that ended that transaction on its own (which
/// the files' check refuses, see `control`, but a stored down script was never
/// checked) has taken the savepoint with it, and is refused rather than have the
/// rest run outside the transaction.
async fn run_script(
    db: &mut sqlx::AnyConnection,
    file: &str,
    script: String,
) -> Result<(), String> {
    let span =
        tracing::info_span!("migration", otel.name = %format!("migration {file}"), file = %file);
    let guarded = async {
        sqlx::raw_sql("SAVEPOINT lockstep_script")
            .execute(&mut *db)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(script)).execute(&mut *db).await
    };
    tracing::Instrument::instrument(guarded, span)
        .await
        .map_err(|e| format!("migrations/{file} failed: {}", db_err(e)))?;
    let released = sqlx::raw_sql("RELEASE SAVEPOINT lockstep_script")
        .execute(&mut *db)
        .await;
    released.map(drop).map_err(|e| {
        format!(
            "migrations/{file} ended the migration transaction on its own (a COMMIT, END or ROLLBACK in the script: {}); what it did before that is not undone by Lockstep, check the schema by hand",
            db_err(e)
        )
    })
}

/// Runs each script of `plan` and the matching history change, on `db` (inside the
/// caller's transaction). A failing script is named with the database's error.
async fn run_plan(
    db: &mut sqlx::AnyConnection,
    names: &Names,
    project: &str,
    tx: &str,
    plan: &SchemaPlan,
) -> Result<(), String> {
    for (m, file) in plan.steps.iter().zip(plan.files()) {
        let script = match plan.direction {
            Direction::Up => m.up.clone(),
            Direction::Down => m.down.clone().unwrap_or_default(),
        };
        let started = std::time::Instant::now();
        run_script(db, &file, script).await?;
        let up = matches!(plan.direction, Direction::Up);
        crate::metrics::migration(up, started.elapsed());
        match plan.direction {
            Direction::Up => {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} (project, version, name, checksum, up_sql, down_sql, applied_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    names.history
                )))
                .bind(project)
                .bind(m.version)
                .bind(&m.name)
                .bind(&m.checksum)
                .bind(&m.up)
                .bind(m.down.clone().unwrap_or_default())
                .bind(tx)
                .execute(&mut *db)
                .await
            }
            Direction::Down => {
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE project = $1 AND version = $2",
                    names.history
                )))
                    .bind(project)
                    .bind(m.version)
                    .execute(&mut *db)
                    .await
            }
        }
        .map_err(|e| format!("recording {file} in lockstep_schema_history: {}", db_err(e)))?;
    }
    Ok(())
}

async fn record_tx(
    db: &mut sqlx::AnyConnection,
    names: &Names,
    project: &str,
    tx: &str,
    plan: &SchemaPlan,
    state: &str,
) -> Result<(), String> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (tx, project, from_version, to_version, plan, state) VALUES ($1, $2, $3, $4, $5, $6)",
        names.tx
    )))
    .bind(tx)
    .bind(project)
    .bind(plan.from.version)
    .bind(plan.to.version)
    .bind(serde_json::to_string(plan).expect("plans serialize"))
    .bind(state)
    .execute(&mut *db)
    .await
    .map(|_| ())
    .map_err(|e| format!("recording the migration transaction: {}", db_err(e)))
}
