//! Transaction control in a migration script. Every script of a release runs inside
//! one database transaction of the agent's, so a script must not begin, end or roll
//! back one of its own: a `BEGIN; ... COMMIT;` wrapper (common in hand-written
//! PostgreSQL migrations) would commit its work outside it, whatever then happens to
//! the release. Found by splitting the script into statements as the database does:
//! comments, quoted text and identifiers, dollar-quoted bodies (PostgreSQL functions)
//! and `BEGIN ... END` blocks inside a statement (SQLite triggers, `BEGIN ATOMIC`) hold
//! no statement of their own.

use super::Backend;

/// The first statement of `script` that cannot run inside the agent's transaction:
/// its leading words (`BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `START TRANSACTION`...,
/// on SQLite also `PRAGMA foreign_keys`, `ATTACH`, `DETACH`), its line, and why.
pub fn transaction_control(
    script: &str,
    backend: Backend,
) -> Option<(String, usize, &'static str)> {
    let mut lexer = Lexer::new(script, backend);
    while let Some(statement) = lexer.statement() {
        let why = match controls(&statement.words) {
            true => Some(CONTROLS),
            false => escapes(&statement.words, backend),
        };
        if let Some(why) = why {
            return Some((statement.words.join(" "), statement.line, why));
        }
    }
    None
}

const CONTROLS: &str = "controls the transaction, but every script of a release runs in one database transaction of the agent's (all of them or none)";

/// Whether a statement beginning with `words` (upper case) controls the transaction.
fn controls(words: &[String]) -> bool {
    let word = |i: usize| words.get(i).map(String::as_str);
    match word(0) {
        Some("BEGIN" | "COMMIT" | "END" | "ABORT") => true,
        Some("START" | "PREPARE") => word(1) == Some("TRANSACTION"),
        Some("ROLLBACK") => word(1) != Some("TO") && word(2) != Some("TO"),
        _ => false,
    }
}

/// Why a statement beginning with `words` would do, inside the agent's transaction,
/// something a rollback or the down script cannot take back (stop 56 review): SQLite
/// ignores `PRAGMA foreign_keys` inside a transaction (a table rebuilt "with foreign
/// keys off" still cascades its deletes to its children), and `ATTACH`/`DETACH`
/// outlive a rollback. (PostgreSQL refuses its own such statements inside a
/// transaction, `CREATE INDEX CONCURRENTLY`, `VACUUM`: the script fails, and nothing
/// is applied.)
fn escapes(words: &[String], backend: Backend) -> Option<&'static str> {
    let word = |i: usize| words.get(i).map(String::as_str);
    // `PRAGMA foreign_keys` or `PRAGMA main.foreign_keys`.
    let foreign_keys = word(1) == Some("FOREIGN_KEYS") || word(2) == Some("FOREIGN_KEYS");
    match (backend, word(0), foreign_keys) {
        (Backend::Sqlite, Some("PRAGMA"), true) => Some(
            "has no effect inside a transaction in SQLite, and every script runs inside the agent's: a table rebuilt with foreign keys \"off\" would still cascade its deletes to its children's rows, which no down script brings back",
        ),
        (Backend::Sqlite, Some("ATTACH" | "DETACH"), _) => Some(
            "is not undone by a rollback in SQLite, and an Abort undoes a migration by rolling it back or by its down script",
        ),
        _ => None,
    }
}

/// The leading words of one statement, and the line it starts on.
struct Statement {
    words: Vec<String>,
    line: usize,
}

/// Words read at the start of each statement.
const LEADING: usize = 3;

/// Reads a script's statements.
struct Lexer<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
    backend: Backend,
}

impl<'a> Lexer<'a> {
    fn new(script: &'a str, backend: Backend) -> Self {
        Self {
            text: script.as_bytes(),
            at: 0,
            line: 1,
            backend,
        }
    }

    /// The next statement (none at the end): up to the `;` outside every quote,
    /// comment and block.
    fn statement(&mut self) -> Option<Statement> {
        let (mut words, mut line, mut blocks) = (Vec::new(), 0, Blocks::default());
        while let Some(c) = self.peek(0) {
            match c {
                b';' if blocks.depth == 0 => {
                    self.at += 1;
                    if !words.is_empty() {
                        return Some(Statement { words, line });
                    }
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let word = self.word();
                    blocks.read(&word);
                    if words.is_empty() {
                        line = self.line;
                    }
                    if words.len() < LEADING {
                        words.push(word);
                    }
                }
                _ => self.skip_other(),
            }
        }
        (!words.is_empty()).then_some(Statement { words, line })
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.text.get(self.at + ahead).copied()
    }

    /// A word, upper case; an `E'...'` string after it is skipped with its escapes
    /// (PostgreSQL's; SQLite has none: `e'\'` is a name and a string).
    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .peek(0)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
        {
            self.at += 1;
        }
        let word = String::from_utf8_lossy(&self.text[start..self.at]).to_ascii_uppercase();
        let postgres = self.backend == Backend::Postgres;
        if postgres && word == "E" && self.peek(0) == Some(b'\'') {
            self.quoted(b'\'', true);
        }
        word
    }

    /// Whatever is not a word or a `;`: blanks, comments, quotes, other characters.
    /// SQLite quotes names in `[...]` and backquotes too; PostgreSQL has dollar-quoted
    /// strings, and `[` is only an array's bracket there.
    fn skip_other(&mut self) {
        let sqlite = self.backend == Backend::Sqlite;
        match (self.peek(0), self.peek(1)) {
            (Some(b'-'), Some(b'-')) => self.until_line_end(),
            (Some(b'/'), Some(b'*')) => self.block_comment(),
            (Some(q @ (b'\'' | b'"')), _) => self.quoted(q, false),
            (Some(b'`'), _) if sqlite => self.quoted(b'`', false),
            (Some(b'['), _) if sqlite => self.quoted(b']', false),
            (Some(b'$'), _) if !sqlite => self.dollar_quoted(),
            (Some(b'\n'), _) => {
                self.line += 1;
                self.at += 1;
            }
            _ => self.at += 1,
        }
    }

    fn until_line_end(&mut self) {
        while self.peek(0).is_some_and(|c| c != b'\n') {
            self.at += 1;
        }
    }

    /// `/* ... */`, nested as PostgreSQL nests them (SQLite does not: its first `*/`
    /// ends the comment).
    fn block_comment(&mut self) {
        let nests = self.backend == Backend::Postgres;
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            match (c, self.peek(1)) {
                (b'/', Some(b'*')) if nests || depth == 0 => {
                    (depth, self.at) = (depth + 1, self.at + 2)
                }
                (b'*', Some(b'/')) => {
                    (depth, self.at) = (depth - 1, self.at + 2);
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.advance(),
            }
        }
    }

    /// From an opening quote to its closing one (a doubled closing quote is one
    /// character; with `escapes`, so is a backslash and what follows it).
    fn quoted(&mut self, close: u8, escapes: bool) {
        self.at += 1;
        while let Some(c) = self.peek(0) {
            let escaped = escapes && c == b'\\';
            let doubled = c == close && self.peek(1) == Some(close) && close != b']';
            if escaped || doubled {
                self.at += 2;
            } else if c == close {
                self.at += 1;
                return;
            } else {
                self.advance();
            }
        }
    }

    /// `$tag$ ... $tag$` (PostgreSQL); a `$` that opens no tag is one character. A
    /// tag's characters are PostgreSQL's: letters (any byte of a non-ASCII one too),
    /// digits but first, `_`.
    fn dollar_quoted(&mut self) {
        let rest = &self.text[self.at + 1..];
        let tag_len = rest
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80))
            .unwrap_or(rest.len());
        let opens =
            rest.get(tag_len) == Some(&b'$') && !rest.first().is_some_and(u8::is_ascii_digit);
        if !opens {
            self.at += 1;
            return;
        }
        let tag = self.text[self.at..self.at + tag_len + 2].to_vec();
        self.at += tag.len();
        while self.peek(0).is_some() && !self.text[self.at..].starts_with(&tag) {
            self.advance();
        }
        self.at = (self.at + tag.len()).min(self.text.len());
    }

    /// One character, counting lines.
    fn advance(&mut self) {
        if self.peek(0) == Some(b'\n') {
            self.line += 1;
        }
        self.at += 1;
    }
}

/// What a statement's words so far say of its `BEGIN ... END` blocks.
#[derive(Default)]
struct Blocks {
    /// Words read.
    seen: usize,
    /// Whether it creates a trigger, a function or a procedure (`None`: not known yet).
    routine: Option<bool>,
    /// Whether its body's block has opened: a routine has one, and any later `begin`
    /// is a name (`SET begin = 1` in a trigger's body).
    opened: bool,
    /// Blocks open, `CASE ... END` inside them counted.
    depth: usize,
}

/// Words that may stand between `CREATE` and `TRIGGER`, `FUNCTION` or `PROCEDURE`.
const ROUTINE_MODIFIERS: [&str; 5] = ["OR", "REPLACE", "TEMP", "TEMPORARY", "CONSTRAINT"];

impl Blocks {
    /// Takes the statement's next word. Only a statement that creates a trigger, a
    /// function or a procedure (`CREATE [OR REPLACE] [TEMP] [CONSTRAINT] TRIGGER`...)
    /// opens a block, at its first `BEGIN`. Anywhere else `begin` is a name, which
    /// opens nothing (stops 55 and 56: a column named `begin`, or a table named
    /// `procedure`, opened a block, so the statements after it went unread).
    fn read(&mut self, word: &str) {
        let first = self.seen == 0;
        self.seen += 1;
        self.routine = match (self.routine, word) {
            (None, "CREATE") if first => None,
            (None, _) if first => Some(false),
            (None, w) if ROUTINE_MODIFIERS.contains(&w) => None,
            (None, "TRIGGER" | "FUNCTION" | "PROCEDURE") => Some(true),
            (None, _) => Some(false),
            (decided, _) => decided,
        };
        self.depth = match word {
            "BEGIN" if self.routine == Some(true) && !self.opened => {
                self.opened = true;
                self.depth + 1
            }
            "CASE" if self.depth > 0 => self.depth + 1,
            "END" if self.depth > 0 => self.depth - 1,
            _ => self.depth,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::{Backend, transaction_control};

    fn found(script: &str) -> Option<(String, usize)> {
        found_in(Backend::Postgres, script)
    }

    fn found_in(backend: Backend, script: &str) -> Option<(String, usize)> {
        transaction_control(script, backend).map(|(words, line, _)| (words, line))
    }

    #[test]
    fn a_script_that_begins_commits_or_rolls_back_is_found_with_its_line() {
        let wrapped = "-- add a table\nBEGIN;\nCREATE TABLE t (x int);\nCOMMIT;\n";
        assert_eq!(found(wrapped), Some(("BEGIN".into(), 2)));
        assert_eq!(
            found("CREATE TABLE t (x int);\n\ncommit;"),
            Some(("COMMIT".into(), 3))
        );
        assert_eq!(
            found("start transaction; select 1;").unwrap().0,
            "START TRANSACTION"
        );
        assert_eq!(found("SELECT 1; END;").unwrap().0, "END");
        assert_eq!(found("ROLLBACK;").unwrap().0, "ROLLBACK");
        assert_eq!(
            found("BEGIN IMMEDIATE TRANSACTION;").unwrap().0,
            "BEGIN IMMEDIATE TRANSACTION"
        );
        assert_eq!(
            found("PREPARE TRANSACTION 'x';").unwrap().0,
            "PREPARE TRANSACTION"
        );
    }

    #[test]
    fn bodies_quotes_and_comments_hold_no_statement_of_their_own() {
        let plpgsql = "CREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n  NEW.x := 1;\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;";
        assert_eq!(found(plpgsql), None);
        let tagged = "DO $body$ BEGIN PERFORM 1; COMMIT; END $body$;";
        assert_eq!(found(tagged), None);
        let trigger = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE b SET n = CASE WHEN n > 0 THEN n ELSE 0 END;\n  DELETE FROM c;\nEND;\nCREATE INDEX i ON a (x);";
        assert_eq!(found(trigger), None);
        let atomic = "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;";
        assert_eq!(found(atomic), None);
        let quoted = "INSERT INTO t VALUES ('a; COMMIT;', E'it\\'s; END;', \"x;begin\");";
        assert_eq!(found(quoted), None);
        let comments = "/* BEGIN; /* nested; */ COMMIT; */ -- ROLLBACK;\nSELECT $1;";
        assert_eq!(found(comments), None);
        assert_eq!(
            found("ROLLBACK TO SAVEPOINT s; SAVEPOINT s; RELEASE s;"),
            None
        );
        assert_eq!(
            found("CREATE TABLE begin_at (x int); SELECT 1 AS commit_ts;"),
            None
        );
    }

    // Review finding of stop 55: `begin` is a legal column name, and any BEGIN after a
    // statement's first word opened a block, so no later `;` ended a statement and the
    // COMMIT that followed ran, committing the agent's migration transaction.
    #[test]
    fn a_column_named_begin_opens_no_block() {
        let column = "ALTER TABLE shifts ADD COLUMN begin timestamptz;\nCOMMIT;";
        assert_eq!(found(column), Some(("COMMIT".into(), 2)));
        let table = "CREATE TABLE t (begin int, x int);\nCOMMIT;";
        assert_eq!(found(table), Some(("COMMIT".into(), 2)));
        let replace = "CREATE OR REPLACE FUNCTION h() RETURNS int LANGUAGE sql\nBEGIN ATOMIC SELECT 1; END;\nSELECT 2;";
        assert_eq!(found(replace), None);
    }

    // Review findings of stop 56: each of these scripts is valid on its database and
    // commits the agent's migration transaction, and the check missed its COMMIT.
    #[test]
    fn a_routine_word_as_a_name_or_a_begin_column_in_a_body_hides_no_commit() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let named = "CREATE TABLE procedure (id INTEGER, begin TEXT);\nCOMMIT;";
            assert_eq!(found_in(backend, named), Some(("COMMIT".into(), 2)));
            let body =
                "CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE b SET begin = 1; END;\nCOMMIT;";
            assert_eq!(found_in(backend, body), Some(("COMMIT".into(), 2)));
            let column_before_body = "CREATE TRIGGER tr AFTER UPDATE OF begin ON a BEGIN\n  UPDATE b SET x = CASE WHEN 1 THEN 2 END;\nEND;\nCOMMIT;";
            assert_eq!(
                found_in(backend, column_before_body),
                Some(("COMMIT".into(), 4))
            );
        }
    }

    #[test]
    fn quotes_and_comments_are_read_as_the_database_reads_them() {
        let sqlite = |script| found_in(Backend::Sqlite, script).map(|f| f.0);
        let unnested = "CREATE TABLE x(a); /* a /* b */ COMMIT; CREATE TABLE y(b); /* */";
        assert_eq!(sqlite(unnested).as_deref(), Some("COMMIT"));
        let no_e_strings = "CREATE TABLE t(x e'\\'); COMMIT; --')";
        assert_eq!(sqlite(no_e_strings).as_deref(), Some("COMMIT"));
        assert_eq!(sqlite("CREATE TABLE [x;COMMIT] (`y;END` int);"), None);
        let postgres = |script| found_in(Backend::Postgres, script).map(|f| f.0);
        let brackets = "UPDATE t SET tags = ARRAY[']'];\nCOMMIT;\nUPDATE t SET tags = ARRAY[']'];";
        assert_eq!(postgres(brackets).as_deref(), Some("COMMIT"));
        let tag =
            "COMMENT ON TABLE t IS $\u{e9}$ $a$ $\u{e9}$; COMMIT; COMMENT ON TABLE t IS $a$x$a$;";
        assert_eq!(postgres(tag).as_deref(), Some("COMMIT"));
    }

    #[test]
    fn on_sqlite_what_a_rollback_cannot_take_back_is_found() {
        let rebuild = "PRAGMA foreign_keys=OFF;\nCREATE TABLE p_new (id INTEGER);\nDROP TABLE p;";
        let (words, line, why) = transaction_control(rebuild, Backend::Sqlite).unwrap();
        assert_eq!((words.as_str(), line), ("PRAGMA FOREIGN_KEYS OFF", 1));
        let qualified = "CREATE TABLE a (x int);\nPRAGMA main.foreign_keys = 0;";
        assert_eq!(found_in(Backend::Sqlite, qualified).unwrap().1, 2);
        assert!(why.contains("cascade"), "{why}");
        assert_eq!(
            found_in(Backend::Sqlite, "ATTACH 'side.db' AS side;")
                .unwrap()
                .0,
            "ATTACH AS SIDE"
        );
        assert_eq!(found_in(Backend::Sqlite, "PRAGMA user_version = 3;"), None);
        assert_eq!(found_in(Backend::Postgres, "DETACH PARTITION x;"), None);
    }
}
