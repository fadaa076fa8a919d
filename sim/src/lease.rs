//! etcd as the coordinators on it see it, simulated: one store every instance shares
//! (etcd's writes are durable once answered, so a coordinator's crash loses none of
//! them), and an election on a lease served by an `etcd` host over the simulated
//! network, so a paused or cut-off leader cannot renew it and loses it after [`TTL`].
//!
//! Every write of an instance is fenced as `lockstep_store::etcd` fences it: applied
//! only while the instance's term still holds the unexpired lease, checked and applied
//! in one step (etcd's compare in the same transaction). A deposed leader that keeps
//! running while its links are held is the adversary: it cannot write one record.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use lockstep_store::{Batch, Durability, Entry, Kv, MemKv, Order, StoreError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use turmoil::net::{TcpListener, TcpStream};

/// The etcd host.
pub const ETCD: &str = "etcd";
const ETCD_PORT: u16 = 2379;
/// The lease's time to live: shorter than a pause (1.5 s to 4 s), so a paused leader
/// is deposed while it is paused.
pub const TTL: Duration = Duration::from_millis(1000);

/// Who holds the lease.
#[derive(Debug, Clone)]
struct Holder {
    name: String,
    term: i64,
    expires: Duration,
}

#[derive(Default)]
struct State {
    holder: Option<Holder>,
    revision: i64,
}

/// The election's state, shared by the etcd host and the fenced stores.
#[derive(Clone, Default)]
pub struct Election(Arc<Mutex<State>>);

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Election {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many leaders were elected (the newest term).
    pub fn terms(&self) -> i64 {
        self.lock().revision
    }

    /// `name` becomes the holder with a new term when nobody holds an unexpired lease.
    fn campaign(&self, name: &str) -> Result<i64, String> {
        let mut s = self.lock();
        if let Some(h) = s.holder.as_ref().filter(|h| h.expires > now()) {
            return Err(h.name.clone());
        }
        s.revision += 1;
        let holder = Holder {
            name: name.to_string(),
            term: s.revision,
            expires: now() + TTL,
        };
        s.holder = Some(holder);
        Ok(s.revision)
    }

    /// Renews the lease of `term`, if it still holds it.
    fn keep_alive(&self, term: i64) -> bool {
        let mut s = self.lock();
        match s.holder.as_mut() {
            Some(h) if h.term == term && h.expires > now() => {
                h.expires = now() + TTL;
                true
            }
            _ => false,
        }
    }
}

/// The shared store as the instance of `term` writes it: every write fenced (unless
/// `fenced` is off, to show what the fence prevents).
pub struct FencedKv {
    kv: MemKv,
    election: Election,
    term: i64,
    fenced: bool,
}

impl FencedKv {
    /// `kv` as an instance that does not lead yet sees it.
    pub fn new(kv: MemKv, election: Election, fenced: bool) -> Self {
        let term = 0;
        Self {
            kv,
            election,
            term,
            fenced,
        }
    }

    /// The same store written by the leader of `term`.
    pub fn with_term(self, term: i64) -> Self {
        Self { term, ..self }
    }
}

impl Kv for FencedKv {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.kv.scan(table, from, to, order, limit)
    }

    fn write(&self, batch: Batch, _: Durability) -> Result<(), StoreError> {
        let election = self.election.lock();
        let holds = election.holder.as_ref();
        let current = holds.is_some_and(|h| h.term == self.term && h.expires > now());
        if self.fenced && !current {
            return Err(StoreError::Fenced(self.term));
        }
        // Durable once answered, as etcd's quorum write is.
        self.kv.write(batch, Durability::Sync)
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The etcd host's software: campaigns and keep-alives, one line each way.
pub async fn serve(election: Election) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(("0.0.0.0", ETCD_PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let election = election.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream);
            let mut line = String::new();
            if lines.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = answer(&election, line.trim());
            let _ = lines.get_mut().write_all(answer.as_bytes()).await;
        });
    }
}

/// The answer to one request line.
fn answer(election: &Election, line: &str) -> String {
    match line.split_once(' ') {
        Some(("campaign", name)) => match election.campaign(name) {
            Ok(term) => format!("term {term}\n"),
            Err(holder) => format!("held {holder}\n"),
        },
        Some(("keepalive", term)) => {
            let alive = term.parse().is_ok_and(|t| election.keep_alive(t));
            if alive { "ok\n" } else { "lost\n" }.to_string()
        }
        _ => "?\n".to_string(),
    }
}

/// Sends `line` to etcd and reads its answer, within a third of the TTL.
async fn ask(line: &str) -> Option<String> {
    let call = async {
        let mut stream = TcpStream::connect((ETCD, ETCD_PORT)).await.ok()?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ok()?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.ok()?;
        Some(answer.trim().to_string())
    };
    tokio::time::timeout(TTL / 3, call).await.ok().flatten()
}

/// Waits until `name` leads; returns its term.
pub async fn campaign(name: &str) -> i64 {
    loop {
        let answer = ask(&format!("campaign {name}")).await;
        if let Some(term) = answer.as_deref().and_then(|a| a.strip_prefix("term ")) {
            if let Ok(term) = term.parse() {
                return term;
            }
        }
        tokio::time::sleep(TTL / 4).await;
    }
}

/// Keeps the lease of `term` alive; resolves once etcd says it is lost. A leader cut
/// off from etcd does not give up by its own clock here (the binary does): it goes on
/// as a leader that was paused and has not noticed yet, the adversary the fence is for.
pub async fn kept_until_lost(term: i64) {
    loop {
        tokio::time::sleep(TTL / 3).await;
        if let Some(answer) = ask(&format!("keepalive {term}")).await {
            if answer != "ok" {
                return;
            }
        }
    }
}
