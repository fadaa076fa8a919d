//! The console's browser scenarios (tests/browser/scenarios.py, Selenium driving
//! Debian's headless Chromium) as a child process the test talks to: the scenario
//! prints `WAIT <what>` when the test must act (commit from the CLI, restart the
//! coordinator) and goes on when the test answers; it ends printing `OK`, or fails
//! with its assertion. Screenshots go to `target/tmp/console/<scenario>.png`.

use std::{path::PathBuf, process::Stdio};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// A running scenario.
pub struct Scenario {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// What it printed besides WAIT and OK (e.g. `REVERT <id>`).
    pub said: Vec<String>,
}

/// The directory the screenshots are written to.
pub fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console")
}

impl Scenario {
    /// Starts scenario `name` with `context` (to which the screenshot directory is added).
    pub fn start(name: &str, mut context: Value, dir: &std::path::Path) -> Self {
        context["out"] = screenshots().display().to_string().into();
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, context.to_string()).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/scenarios.py");
        let mut child = Command::new(super::python())
            .arg(script)
            .arg(name)
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 of scripts/setup's venv");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Scenario {
            name: name.into(),
            child,
            stdin,
            lines,
            said: Vec::new(),
        }
    }

    /// Waits until the scenario asks the test to act; returns what it asks.
    pub async fn asks(&mut self) -> String {
        loop {
            match self.next_line().await {
                Some(line) => match line.strip_prefix("WAIT ") {
                    Some(what) => return what.to_string(),
                    None => self.said.push(line),
                },
                None => self.failed().await,
            }
        }
    }

    /// Tells the scenario to go on, with `answer`.
    pub async fn answer(&mut self, answer: &str) {
        let line = format!("{answer}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the scenario to pass; returns what it said on the way.
    pub async fn passes(mut self) -> Vec<String> {
        while let Some(line) = self.next_line().await {
            if line == "OK" {
                let status = self.child.wait().await.unwrap();
                assert!(status.success(), "{} exited {status}", self.name);
                return self.said;
            }
            assert!(!line.starts_with("WAIT "), "{} asks {line:?}", self.name);
            self.said.push(line);
        }
        self.failed().await
    }

    async fn next_line(&mut self) -> Option<String> {
        let deadline = std::time::Duration::from_secs(120);
        tokio::time::timeout(deadline, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} said nothing for {deadline:?}", self.name))
            .unwrap()
    }

    async fn failed(&mut self) -> ! {
        let status = self.child.wait().await.unwrap();
        panic!(
            "browser scenario {} failed ({status}); its assertion is above; screenshot in {}",
            self.name,
            screenshots().display()
        )
    }
}
