//! The store on etcd, for a coordinator that must survive its host: every table under
//! one key prefix (`PREFIX/TABLE/KEY`), each batch one etcd transaction (atomic, and
//! durable once etcd answers: replicated and fsynced by a quorum), so several
//! coordinators can share one replicated log.
//!
//! A write may carry a fence: the compare that etcd checks in the same transaction
//! (the leadership key still has the create revision this writer was elected with).
//! A deposed, paused or partitioned writer's next write then fails as
//! [`StoreError::Fenced`] and changes nothing: safety rests on etcd's compare, never
//! on a writer believing it leads.
//!
//! The [`Kv`] trait is synchronous; calls run on a small runtime of this store's own
//! and the caller's thread waits for the answer, as it would for a disk.
//!
//! etcd limits one transaction to `--max-txn-ops` operations (128 by default) and one
//! request to `--max-request-bytes` (1.5 MiB): a coordinator's steps can exceed both,
//! so it needs larger limits, checks them before it serves
//! ([`EtcdKv::check_limits`]) and keeps its batches within them
//! ([`Kv::batch_limit`]).

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, SortOrder, SortTarget, Txn,
    TxnOp, TxnResponse,
};
use tokio::runtime::Handle;

use crate::{
    Batch, BatchLimit, Durability, Entry, Kv, Op, Order, StoreError,
    etcd_route::{Members, Route},
    keys::prefix_end,
};

/// The operations a coordinator's etcd transactions may need (`--max-txn-ops`).
pub const REQUIRED_TXN_OPS: usize = 10_000;

/// The request size a coordinator's etcd transactions may need
/// (`--max-request-bytes`): twice the largest message a coordinator accepts (4 MiB,
/// `lockstep::limits::MAX_MESSAGE_BYTES`), a request's records and its events.
pub const REQUIRED_REQUEST_BYTES: usize = 8 << 20;

/// How long one call to etcd may take before it counts as failed (and is made again,
/// see [`RETRY_FOR`]): etcdctl's own default. A member that is frozen (it keeps its
/// connections and answers nothing) costs each call sent to it this long, and a
/// release makes several (10 s before stop 63: 20-50 s a release with one member of
/// three frozen, t91 `releases_go_on_while_an_etcd_member_is_frozen`).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call is made again while etcd cannot answer it (a member down, a leader
/// election among the members): every call here is idempotent (reads, and batches of
/// puts and deletes of given values under the same fence), so a retry after an answer
/// was lost writes nothing new.
const RETRY_FOR: Duration = Duration::from_secs(20);

/// A write guard: etcd applies a batch only while `key` has create revision `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leadership key.
    pub key: Vec<u8>,
    /// Its create revision when this writer was elected (its term).
    pub revision: i64,
}

/// Where this writer stands in the store's sequence key, which every batch's
/// transaction requires unchanged since this writer's previous batch and moves on: an
/// attempt that etcd applies late (after its retry and later batches got through) is
/// refused whole instead of writing its older values over newer ones.
#[derive(Debug, Default)]
struct Sequence {
    /// The sequence key's mod revision after this writer's last batch (`None`: read it
    /// before the next batch, as after an election).
    revision: Option<i64>,
    /// Batches written: each batch's token names its writer and its number.
    batches: u64,
}

/// What a refused batch turns out to be.
enum Settled {
    /// Written by an earlier attempt; the sequence's revision after it.
    Written(i64),
    /// Not written: an earlier batch of this writer landed after the sequence was read.
    Behind,
}

/// The largest answer read from etcd (a scan's page of whole records).
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// Tables on etcd.
pub struct EtcdKv {
    client: Client,
    /// Each member, for a client of its own (the lease keeper's, after a failure).
    members: Members,
    /// The member the store's own calls go to.
    route: Arc<Route>,
    prefix: Vec<u8>,
    tables: Vec<&'static str>,
    fence: Mutex<Option<Fence>>,
    /// Held across each batch's transaction: batches reach etcd one at a time, each
    /// after the one before it.
    sequence: Mutex<Sequence>,
    /// What makes this writer's batch tokens its own.
    writer: String,
    runtime: Handle,
    _owned: OwnedRuntime,
    /// Every transaction sent, for tests that deliver one again late.
    #[cfg(test)]
    sent: Mutex<Vec<Txn>>,
    /// Set by tests: the next transaction is applied once and its answer lost first.
    #[cfg(test)]
    lose_an_answer: std::sync::atomic::AtomicBool,
    /// Set by tests: the next transaction is applied, then answered with an error.
    #[cfg(test)]
    fail_an_answer: std::sync::atomic::AtomicBool,
}

/// The store's own runtime, shut down without waiting when the store goes: the last
/// handle may be dropped on a thread that runs another runtime (the journal's syncer),
/// where dropping a runtime the usual way panics.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where an etcd store lives: its members, its key prefix and how to reach them.
#[derive(Debug, Clone, Default)]
pub struct EtcdTarget {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// The key prefix every table lives under (no trailing `/`).
    pub prefix: String,
    /// TLS to the members, when given: (CA, client certificate, client key) in PEM.
    pub tls: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl EtcdTarget {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (default prefix `lockstep`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{url:?} is not an etcd://HOST:PORT[,...][/PREFIX] URL"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, "lockstep"));
        let endpoints: Vec<String> = hosts.split(',').map(str::to_string).collect();
        if endpoints
            .iter()
            .any(|e| !e.contains(':') || e.contains(' '))
        {
            return Err(format!("{url:?}: each member is HOST:PORT"));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(format!("{url:?}: the prefix after / is empty"));
        }
        Ok(Self {
            endpoints,
            prefix: prefix.to_string(),
            tls: None,
        })
    }
}

impl EtcdKv {
    /// Connects to `target` for `tables` (names are part of the keys: a table not
    /// declared here is refused, as RocksDB refuses one).
    pub fn open(target: &EtcdTarget, tables: &[&'static str]) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd(format!("starting its runtime: {e}")))?;
        let owned = OwnedRuntime(Some(runtime));
        let runtime = owned.0.as_ref().map(|r| r.handle().clone());
        let runtime = runtime.ok_or_else(|| StoreError::Etcd("its runtime is gone".into()))?;
        let members = Members {
            endpoints: target.endpoints.clone(),
            options: connect_options(target),
        };
        let (endpoints, options) = (members.endpoints.clone(), members.options.clone());
        let client = wait(&runtime, async move {
            Client::connect(endpoints, Some(options)).await
        })?;
        Ok(Self {
            client,
            route: Arc::new(Route::new(members.clone(), MAX_ANSWER_BYTES)),
            members,
            prefix: format!("{}/", target.prefix).into_bytes(),
            tables: tables.to_vec(),
            fence: Mutex::new(None),
            sequence: Mutex::default(),
            writer: writer_id(),
            runtime,
            _owned: owned,
            #[cfg(test)]
            sent: Mutex::default(),
            #[cfg(test)]
            lose_an_answer: Default::default(),
            #[cfg(test)]
            fail_an_answer: Default::default(),
        })
    }

    /// Guards every later write with `fence` (`None`: unguarded).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
        // A new term starts from the sequence as the last leader left it.
        self.lock_sequence().revision = None;
    }

    fn lock_sequence(&self) -> std::sync::MutexGuard<'_, Sequence> {
        // Every mutation of a sequence is one assignment: a poisoned lock holds one.
        self.sequence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key every batch moves (outside every table's range).
    fn sequence_key(&self) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(b"sequence");
        key
    }

    /// A client on the same members (leadership uses it for leases and elections).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The cluster's members and how to connect to each.
    pub(crate) fn members(&self) -> Members {
        self.members.clone()
    }

    /// The key prefix every table lives under (with its trailing `/`).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The runtime the store's calls run on.
    pub fn runtime(&self) -> Handle {
        self.runtime.clone()
    }

    fn table_prefix(&self, table: &'static str) -> Result<Vec<u8>, StoreError> {
        if !self.tables.contains(&table) {
            return Err(StoreError::UnknownTable(table.to_string()));
        }
        let mut key = self.prefix.clone();
        key.extend_from_slice(table.as_bytes());
        key.push(b'/');
        Ok(key)
    }

    fn key(&self, table: &'static str, key: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut full = self.table_prefix(table)?;
        full.extend_from_slice(key);
        Ok(full)
    }

    /// The batch's operations as etcd's, the last of each key only.
    fn ops(&self, batch: Batch) -> Result<Vec<TxnOp>, StoreError> {
        let ops = last_per_key(batch.ops).into_iter();
        ops.map(|op| self.op(op)).collect()
    }

    /// Writes `ops` marked `token` after this writer's previous batch (at `known`, or
    /// read from etcd when not known), and returns the sequence's revision after it. Sent once more
    /// when an earlier batch of this writer, answered with an error, landed after all
    /// since the sequence was read.
    fn write_sequenced(
        &self,
        ops: &[TxnOp],
        fence: Option<&Fence>,
        token: &[u8],
        mut known: Option<i64>,
    ) -> Result<i64, StoreError> {
        for _ in 0..2 {
            let after = match known {
                Some(revision) => revision,
                None => self.read(self.sequence_key())?.map_or(0, |kv| kv.1),
            };
            let answer = self.send(self.batch_txn(ops.to_vec(), fence, after, token))?;
            if let (true, Some(header)) = (answer.succeeded(), answer.header()) {
                return Ok(header.revision());
            }
            match self.settle(token, fence)? {
                Settled::Written(revision) => return Ok(revision),
                Settled::Behind => known = None,
            }
        }
        Err(StoreError::Etcd(
            "this writer's own earlier batches keep landing after its newer ones".into(),
        ))
    }

    /// The one etcd transaction that writes `ops`: guarded by `fence`, and by the
    /// sequence key still at revision `after`, which it moves on, marked with `token`.
    fn batch_txn(
        &self,
        mut ops: Vec<TxnOp>,
        fence: Option<&Fence>,
        after: i64,
        token: &[u8],
    ) -> Txn {
        ops.push(TxnOp::put(self.sequence_key(), token, None));
        let mut when = vec![Compare::mod_revision(
            self.sequence_key(),
            CompareOp::Equal,
            after,
        )];
        if let Some(f) = fence {
            when.push(Compare::create_revision(
                f.key.clone(),
                CompareOp::Equal,
                f.revision,
            ));
        }
        Txn::new().when(when).and_then(ops)
    }

    /// Why etcd refused the batch marked `token`: an earlier attempt of it got through
    /// (the sequence key holds its token: written), or this writer's term ended, or an
    /// earlier batch of this writer landed late (behind: read the sequence again), or
    /// another writer wrote since this one's last batch (two coordinators on one
    /// prefix without a lead: refused, not merged).
    fn settle(&self, token: &[u8], fence: Option<&Fence>) -> Result<Settled, StoreError> {
        let now = self.read(self.sequence_key())?;
        if let Some((value, revision)) = &now {
            if value == token {
                return Ok(Settled::Written(*revision));
            }
        }
        if let Some(f) = fence {
            let term = self.read_created(f.key.clone())?;
            if term != Some(f.revision) {
                return Err(StoreError::Fenced(f.revision));
            }
        }
        let mine = format!("{}:", self.writer);
        match now {
            Some((value, _)) if value.starts_with(mine.as_bytes()) => Ok(Settled::Behind),
            _ => Err(StoreError::Etcd(
                "another writer wrote under this prefix since this one's last batch".into(),
            )),
        }
    }

    /// `key`'s value and mod revision, if it exists.
    fn read(&self, key: Vec<u8>) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let got = self.get_raw(key)?;
        Ok(got.map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// `key`'s create revision, if it exists.
    fn read_created(&self, key: Vec<u8>) -> Result<Option<i64>, StoreError> {
        Ok(self.get_raw(key)?.map(|kv| kv.create_revision()))
    }

    fn get_raw(&self, key: Vec<u8>) -> Result<Option<KeyValue>, StoreError> {
        let got = self.routed(move |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })?;
        Ok(got.kvs().first().cloned())
    }

    /// A KV client taking answers as large as etcd sends them (etcd-client's default
    /// refuses a decoded answer over 4 MiB: a page of checkpoints or records of a big
    /// environment, which a new leader must read to catch up).
    pub(crate) fn kv_client(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    /// Sends `txn`, again while etcd cannot answer.
    fn send(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        #[cfg(test)]
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(txn.clone());
        #[cfg(test)]
        if self
            .lose_an_answer
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let _lost = self.transact(txn.clone());
        }
        #[cfg(test)]
        if self
            .fail_an_answer
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let _applied = self.transact(txn);
            return Err(StoreError::Etcd(
                "the answer was lost past the retries".into(),
            ));
        }
        self.transact(txn)
    }

    /// Sends `txn` as it is.
    fn transact(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.routed(move |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
    }

    /// Makes the call `make` builds on a client of the route's member, again on the
    /// next member while it fails transiently (see [`wait_retrying`]).
    pub(crate) fn routed<T, F, Fut>(&self, make: F) -> Result<T, StoreError>
    where
        F: Fn(etcd_client::KvClient) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send + 'static,
    {
        let (route, make) = (self.route.clone(), Arc::new(make));
        wait_retrying(&self.runtime, move || {
            let (route, make) = (route.clone(), make.clone());
            async move {
                let turn = route.turn();
                let answer = match route.client(turn).await {
                    Ok(kv) => make(kv).await,
                    Err(e) => Err(e),
                };
                if answer.as_ref().is_err_and(transient) {
                    route.failed(turn);
                }
                answer
            }
        })
    }

    fn op(&self, op: Op) -> Result<TxnOp, StoreError> {
        Ok(match op {
            Op::Put { table, key, value } => TxnOp::put(self.key(table, &key)?, value, None),
            Op::Delete { table, key } => TxnOp::delete(self.key(table, &key)?, None),
        })
    }
}

/// A name no other writer's tokens share: this process, the time it opened the store,
/// and a random key of the standard library's hasher.
fn writer_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut random = std::collections::hash_map::RandomState::new().build_hasher();
    random.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{}-{:016x}", std::process::id(), random.finish())
}

fn connect_options(target: &EtcdTarget) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
    if let Some((ca, cert, key)) = &target.tls {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca.clone()))
            .identity(etcd_client::Identity::from_pem(cert.clone(), key.clone()));
        options = options.with_tls(tls);
    }
    options
}

/// Makes the call `make` builds, on `runtime`, again while it fails transiently (for
/// at most [`RETRY_FOR`]), and waits for the outcome on this thread.
pub(crate) fn wait_retrying<T, F, Fut>(runtime: &Handle, make: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send,
    T: Send + 'static,
{
    wait(runtime, async move {
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match make().await {
                Err(e) if transient(&e) && start.elapsed() < RETRY_FOR => {
                    tracing::warn!("etcd: {e}; asking again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                outcome => return outcome,
            }
        }
    })
}

/// Whether `e` says the call did not get through, or etcd could not serve it now.
pub(crate) fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Runs `call` on `runtime` and waits for it on this thread (which may be a worker of
/// another runtime: it only blocks, it never enters this one).
pub(crate) fn wait<T, F>(runtime: &Handle, call: F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(call.await);
    });
    blocking(|| rx.recv())
        .map_err(|_| StoreError::Etcd("the store's runtime stopped".into()))?
        .map_err(|e| StoreError::Etcd(e.to_string()))
}

/// Runs `f`, which blocks on etcd, handing the tasks of the caller's runtime to another
/// thread first when the caller is a worker of a multi-threaded one. A call to a member
/// that is frozen (it keeps its connections and answers nothing, as a stopped process
/// or a member stalled on its disk) waits its whole timeout: on a worker it held that
/// worker's tasks, and with every worker so held the coordinator answered nothing, not
/// even the HTTP/2 pings of its clients, which then dropped their calls (stop 63, t91
/// `releases_go_on_while_an_etcd_member_is_frozen`).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::RuntimeFlavor;
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The last op of each key, in batch order: etcd refuses a transaction that names a
/// key twice, and within one atomic batch only the last op of a key counts.
fn last_per_key(ops: Vec<Op>) -> Vec<Op> {
    let id = |op: &Op| match op {
        Op::Put { table, key, .. } | Op::Delete { table, key } => (*table, key.clone()),
    };
    let mut last = std::collections::HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        last.insert(id(op), i);
    }
    ops.into_iter()
        .enumerate()
        .filter(|(i, op)| last.get(&id(op)) == Some(i))
        .map(|(_, op)| op)
        .collect()
}

impl Kv for EtcdKv {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read(self.key(table, key)?)?.map(|(value, _)| value))
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let base = self.table_prefix(table)?;
        let start = self.key(table, from)?;
        let end = match to {
            Some(to) => self.key(table, to)?,
            None => prefix_end(&base),
        };
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let sort = match order {
            Order::Ascending => SortOrder::Ascend,
            Order::Descending => SortOrder::Descend,
        };
        let options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, sort)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let got = self.routed(move |mut kv| {
            let (start, options) = (start.clone(), options.clone());
            async move { kv.get(start, Some(options)).await }
        })?;
        let entries = got.kvs().iter();
        let strip = |k: &[u8]| k[base.len()..].to_vec();
        Ok(entries
            .map(|kv| (strip(kv.key()), kv.value().to_vec()))
            .collect())
    }

    fn write(&self, batch: Batch, _durability: Durability) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let fence = self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ops = self.ops(batch)?;
        let mut sequence = self.lock_sequence();
        sequence.batches += 1;
        let token = format!("{}:{}", self.writer, sequence.batches).into_bytes();
        let written = self.write_sequenced(&ops, fence.as_ref(), &token, sequence.revision);
        // After an error the batch may still land: the next one reads where it stands.
        sequence.revision = written.as_ref().ok().copied();
        written.map(drop)
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every etcd write is durable once it is answered.
        Ok(())
    }

    /// What [`EtcdKv::check_limits`] made sure the members take, less the sequence key
    /// each batch also writes, and with room for what etcd adds per operation (the
    /// prefix on each key, framing: at most ~150 bytes, 1.5 MB over 9,999 operations).
    fn batch_limit(&self) -> Option<BatchLimit> {
        Some(BatchLimit {
            ops: REQUIRED_TXN_OPS - 1,
            bytes: REQUIRED_REQUEST_BYTES / 2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members_and_a_prefix() {
        let t = EtcdTarget::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/prod/lockstep/").unwrap();
        assert_eq!(t.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(t.prefix, "prod/lockstep");
        assert_eq!(EtcdTarget::parse("etcd://h:1").unwrap().prefix, "lockstep");
        assert!(EtcdTarget::parse("http://h:1").is_err());
        assert!(EtcdTarget::parse("etcd://h").is_err());
    }

    #[test]
    fn only_the_last_op_of_a_key_is_sent() {
        let mut b = Batch::default();
        b.put("t", b"k".to_vec(), b"1".to_vec());
        b.put("t", b"j".to_vec(), b"1".to_vec());
        b.delete("t", b"k".to_vec());
        b.put("u", b"k".to_vec(), b"2".to_vec());
        let kept = last_per_key(b.ops);
        assert_eq!(kept.len(), 3);
        assert!(matches!(&kept[1], Op::Delete { table: "t", .. }));
    }

    /// A store of table `t` on an etcd member of its own (kept running while the
    /// member and its directory are held).
    fn on_a_member() -> (tempfile::TempDir, crate::etcd_member::EtcdMember, EtcdKv) {
        let dir = tempfile::tempdir().unwrap();
        let member = crate::etcd_member::EtcdMember::start(dir.path()).unwrap();
        let target = EtcdTarget::parse(&member.url("t")).unwrap();
        let kv = EtcdKv::open(&target, &["t"]).unwrap();
        (dir, member, kv)
    }

    /// Review finding of stop 53: reads went through etcd-client's default limit of 4
    /// MiB on a decoded answer, so a scan of a thousand checkpoints of an environment of
    /// ~100 projects (a new leader's catch-up, a history page) failed, not retried: no
    /// instance could lead. Given 6 MiB in one table, a scan of it answers whole.
    #[test]
    fn a_scan_larger_than_four_mib_answers_whole() {
        let (_dir, _member, kv) = on_a_member();
        let value = vec![b'x'; 8 * 1024];
        for chunk in 0..8u32 {
            let mut batch = Batch::default();
            for n in 0..96u32 {
                let key = format!("k{:05}", chunk * 96 + n).into_bytes();
                batch.put("t", key, value.clone());
            }
            kv.write(batch, Durability::Sync).unwrap();
        }
        let all = kv
            .scan("t", b"", None, Order::Ascending, usize::MAX)
            .unwrap();
        assert_eq!(all.len(), 768);
    }

    /// Review finding of stop 51 (not reproducible end to end: it needs etcd to apply a
    /// request after a later one): a batch whose first attempt went unanswered (a
    /// deadline, a leader change among the members) is sent again; when that first
    /// attempt is applied after all, later than batches written after it, it changes
    /// nothing: the newer value stays.
    #[test]
    fn a_first_attempt_applied_late_changes_nothing() {
        let (_dir, _member, kv) = on_a_member();
        let mut older = Batch::default();
        older.put("t", b"k".to_vec(), b"older".to_vec());
        kv.write(older, Durability::Sync).unwrap();
        let first_attempt = kv.sent.lock().unwrap().last().cloned().unwrap();
        let mut newer = Batch::default();
        newer.put("t", b"k".to_vec(), b"newer".to_vec());
        kv.write(newer, Durability::Sync).unwrap();
        let _ = kv.send(first_attempt);
        assert_eq!(kv.get("t", b"k").unwrap().unwrap(), b"newer");
    }

    /// The other half: when a batch's first attempt was applied but its answer was
    /// lost, the retry is refused by the sequence, and the batch still counts as
    /// written (the sequence key holds its token): the write succeeds, and so do the
    /// writes after it.
    #[test]
    fn a_batch_whose_answer_was_lost_is_written_once() {
        let (_dir, _member, kv) = on_a_member();
        for value in [&b"one"[..], b"two"] {
            kv.lose_an_answer
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let mut batch = Batch::default();
            batch.put("t", b"k".to_vec(), value.to_vec());
            kv.write(batch, Durability::Sync).unwrap();
            assert_eq!(kv.get("t", b"k").unwrap().unwrap(), value);
        }
    }

    /// Found by review at stop 52: a batch answered with an error (past the retries)
    /// may have been written all the same, and the writer's next batch then found the
    /// sequence moved by its own earlier token and stopped as if another writer had
    /// written. Given a batch written but answered with an error, when the writer
    /// writes again, then that batch is written too.
    #[test]
    fn a_batch_answered_with_an_error_but_written_does_not_stop_its_writer() {
        let (_dir, _member, kv) = on_a_member();
        let put = |value: &[u8]| {
            let mut batch = Batch::default();
            batch.put("t", b"k".to_vec(), value.to_vec());
            batch
        };
        kv.write(put(b"first"), Durability::Sync).unwrap();
        kv.fail_an_answer
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(kv.write(put(b"second"), Durability::Sync).is_err());
        assert_eq!(kv.get("t", b"k").unwrap().unwrap(), b"second");
        kv.write(put(b"third"), Durability::Sync).unwrap();
        assert_eq!(kv.get("t", b"k").unwrap().unwrap(), b"third");
    }
}
