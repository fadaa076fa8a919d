//! The second environment of the simulation and what its stages need: `prod` comes
//! after `default`, takes every verified release of `default` by auto-promotion, runs
//! an http smoke test, an external test run and an approval before COMMIT, and after
//! commit a short soak and a live http check whose failure reverts the release. The
//! http steps are answered by [`SimProbe`], which fails a share of them, drawn from the
//! seed.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lockstep_coordinator::ports::{Pending, Probe};
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// The environment after `default`.
pub const PROD: &str = "prod";

/// The pipeline the operator applies before any release: `prod` verifies before COMMIT
/// (an http smoke test at `{site}/smoke`, an external test run, an approval, each with
/// `deadline`) and checks `{site}/health` after it. Deadlines are short so that a step
/// nobody answers (a tester cut off by a partition) fails within the run. The
/// end-to-end fault test applies it too, against a real http server.
pub fn pipeline(site: &str, deadline: &str) -> String {
    PIPELINE
        .replace("{site}", site)
        .replace("{deadline}", deadline)
}

const PIPELINE: &str = r#"
[[environment]]
name = "default"

[[environment]]
name = "prod"
after = "default"
auto_promote = true
soak = "300ms"
on_live_failure = "revert"
  [[environment.verify]]
  name = "smoke"
  kind = "http"
  url = "{site}/smoke"
  deadline = "{deadline}"
  [[environment.verify]]
  name = "tests"
  kind = "external"
  deadline = "{deadline}"
  [[environment.verify]]
  name = "approval"
  kind = "approval"
  deadline = "{deadline}"
  [[environment.verify_live]]
  name = "health"
  kind = "http"
  url = "{site}/health"
"#;

/// Answers the http steps: after a few simulated milliseconds, 200, or 503 for a share
/// of them (one smoke test in ten, one live check in six).
pub struct SimProbe {
    rng: Mutex<SmallRng>,
}

impl SimProbe {
    /// A probe whose answers follow from `seed` (and the order of the requests, which
    /// the simulation fixes).
    pub fn shared(seed: u64) -> Arc<dyn Probe> {
        Arc::new(Self {
            rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0x009e_0be5)),
        })
    }
}

impl Probe for SimProbe {
    fn get(&self, url: &str) -> Pending<Result<u16, String>> {
        let failing = if url.ends_with("/health") { 6 } else { 10 };
        let (delay, status) = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let fails = rng.random_range(0..failing) == 0;
            (rng.random_range(2..40), if fails { 503 } else { 200 })
        };
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok(status)
        })
    }
}
