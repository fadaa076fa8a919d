//! Transaction control in a migration script. Every script of a release runs inside
//! one database transaction of the agent's, so a script must not begin, end or roll
//! back one of its own: a `BEGIN; ... COMMIT;` wrapper (common in hand-written
//! PostgreSQL migrations) would commit its work outside it, whatever then happens to
//! the release. Found by splitting the script into statements as the database does:
//! comments, quoted text and identifiers, dollar-quoted bodies (PostgreSQL functions)
//! and `BEGIN ... END` blocks inside a statement (SQLite triggers, `BEGIN ATOMIC`) hold
//! no statement of their own.

/// The first statement of `script` that controls the transaction: its leading words
/// (`BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `START TRANSACTION`...) and its line.
pub fn transaction_control(script: &str) -> Option<(String, usize)> {
    let mut lexer = Lexer::new(script);
    while let Some(statement) = lexer.statement() {
        if controls(&statement.words) {
            return Some((statement.words.join(" "), statement.line));
        }
    }
    None
}

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
}

impl<'a> Lexer<'a> {
    fn new(script: &'a str) -> Self {
        Self {
            text: script.as_bytes(),
            at: 0,
            line: 1,
        }
    }

    /// The next statement (none at the end): up to the `;` outside every quote,
    /// comment and block.
    fn statement(&mut self) -> Option<Statement> {
        let (mut words, mut line, mut depth) = (Vec::new(), 0, 0usize);
        let (mut seen, mut routine) = (0usize, false);
        while let Some(c) = self.peek(0) {
            match c {
                b';' if depth == 0 => {
                    self.at += 1;
                    if !words.is_empty() {
                        return Some(Statement { words, line });
                    }
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let word = self.word();
                    routine |= seen < ROUTINE_WORDS && creates_routine(&words, &word);
                    seen += 1;
                    depth = block_depth(depth, &word, words.is_empty() || !routine);
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

    /// A word, upper case; an `E'...'` string after it is skipped with its escapes.
    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .peek(0)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
        {
            self.at += 1;
        }
        let word = String::from_utf8_lossy(&self.text[start..self.at]).to_ascii_uppercase();
        if word == "E" && self.peek(0) == Some(b'\'') {
            self.quoted(b'\'', true);
        }
        word
    }

    /// Whatever is not a word or a `;`: blanks, comments, quotes, other characters.
    fn skip_other(&mut self) {
        match (self.peek(0), self.peek(1)) {
            (Some(b'-'), Some(b'-')) => self.until_line_end(),
            (Some(b'/'), Some(b'*')) => self.block_comment(),
            (Some(q @ (b'\'' | b'"' | b'`')), _) => self.quoted(q, false),
            (Some(b'['), _) => self.quoted(b']', false),
            (Some(b'$'), _) => self.dollar_quoted(),
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

    /// `/* ... */`, nested as PostgreSQL nests them.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            match (c, self.peek(1)) {
                (b'/', Some(b'*')) => (depth, self.at) = (depth + 1, self.at + 2),
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

    /// `$tag$ ... $tag$` (PostgreSQL); a `$` that opens no tag is one character.
    fn dollar_quoted(&mut self) {
        let rest = &self.text[self.at + 1..];
        let tag_len = rest
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
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

/// How far into a statement `TRIGGER`, `FUNCTION` or `PROCEDURE` is looked for
/// (`CREATE OR REPLACE TEMP TRIGGER`).
const ROUTINE_WORDS: usize = 5;

/// Whether `word`, after the statement's `words` so far, makes it create a trigger, a
/// function or a procedure: only their bodies hold `BEGIN ... END` blocks. Anywhere
/// else `begin` is a name (a column), which opens nothing (stop 55: it opened a block,
/// so the statements after it went unread).
fn creates_routine(words: &[String], word: &str) -> bool {
    words.first().is_some_and(|w| w == "CREATE")
        && matches!(word, "TRIGGER" | "FUNCTION" | "PROCEDURE")
}

/// The depth of `BEGIN ... END` blocks inside a statement after `word` (`opens_none`:
/// the statement's first word, where `BEGIN` begins a transaction, or a statement that
/// creates no routine, where it is a name). Inside a block, `CASE ... END` nests, so
/// its `END` closes no block.
fn block_depth(depth: usize, word: &str, opens_none: bool) -> usize {
    match word {
        "BEGIN" if !opens_none => depth + 1,
        "CASE" if depth > 0 => depth + 1,
        "END" if depth > 0 => depth - 1,
        _ => depth,
    }
}

#[cfg(test)]
mod tests {
    use super::transaction_control;

    fn found(script: &str) -> Option<(String, usize)> {
        transaction_control(script)
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
}
