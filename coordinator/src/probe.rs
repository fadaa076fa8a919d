//! The http verify steps' requests, over reqwest (rustls): one GET per step run,
//! redirects not followed (a step names the URL it means), the answer's status handed
//! back. The step's own deadline bounds how long the machine waits; the request's
//! timeouts only keep a hung server from holding a connection forever.

use std::{sync::Arc, time::Duration};

use crate::{
    notify::cloud::describe,
    ports::{Pending, Probe},
};

/// GETs over HTTP(S).
pub struct HttpProbe {
    client: reqwest::Client,
}

impl HttpProbe {
    /// A probe with its own connection pool.
    pub fn shared() -> Arc<dyn Probe> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client with rustls and no custom roots builds");
        Arc::new(Self { client })
    }
}

impl Probe for HttpProbe {
    fn get(&self, url: &str) -> Pending<Result<u16, String>> {
        let request = self.client.get(url).send();
        Box::pin(async move {
            let answer = request.await.map_err(|e| describe(&e))?;
            Ok(answer.status().as_u16())
        })
    }
}
