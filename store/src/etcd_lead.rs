//! Which of several coordinators on one etcd prefix leads. Each instance holds a lease
//! (kept alive every third of its TTL) and tries to create the leadership key
//! `PREFIX/leader` on it, in a transaction that succeeds only while the key does not
//! exist. The key's create revision is the leader's **term**: every write of the
//! store is fenced on it ([`crate::etcd::Fence`]), so once the lease expires (a paused
//! or partitioned leader) and another instance creates the key anew, the old leader's
//! next write fails and changes nothing. Losing the lease is also told to the leader
//! ([`Lead::lost`]), which stops serving: never "I think I still lead".

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;

use crate::{
    StoreError,
    etcd::{EtcdKv, Fence, wait},
};

/// This instance leads: its term, and how it hears that it no longer does.
pub struct Lead {
    /// The leadership key's create revision: the term every write is fenced on.
    pub term: i64,
    lost: watch::Receiver<Option<String>>,
}

impl Lead {
    /// Resolves, with why, once the lease is lost (it could not be kept alive): the
    /// caller must stop serving, since its writes are already refused.
    pub async fn lost(mut self) -> String {
        loop {
            if let Some(why) = self.lost.borrow().clone() {
                return why;
            }
            if self.lost.changed().await.is_err() {
                return "the lease keeper stopped".into();
            }
        }
    }
}

impl EtcdKv {
    /// The leadership key of this store's prefix.
    pub fn leader_key(&self) -> Vec<u8> {
        let mut key = self.prefix().to_vec();
        key.extend_from_slice(b"leader");
        key
    }

    /// Waits until this instance (`me`: its address, shown to the others) leads, then
    /// fences every later write of this store on its term. `waiting` hears who leads
    /// meanwhile, each time that changes.
    pub fn lead(
        &self,
        me: &str,
        ttl: Duration,
        waiting: impl Fn(&str) + Send + 'static,
    ) -> Result<Lead, StoreError> {
        let (client, key, me) = (self.client(), self.leader_key(), me.to_string());
        let campaign = campaign(client, key, me, ttl, waiting);
        let lead = wait(&self.runtime(), campaign)
            .map_err(|e| StoreError::Etcd(format!("campaigning for leadership: {e}")))?;
        self.set_fence(Some(Fence {
            key: self.leader_key(),
            revision: lead.term,
        }));
        Ok(lead)
    }

    /// Who leads now (the leader's address), if anyone.
    pub fn leader(&self) -> Result<Option<String>, StoreError> {
        let (mut client, key) = (self.client(), self.leader_key());
        let got = wait(&self.runtime(), async move { client.get(key, None).await })?;
        Ok(got
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

async fn campaign(
    mut client: Client,
    key: Vec<u8>,
    me: String,
    ttl: Duration,
    waiting: impl Fn(&str),
) -> Result<Lead, etcd_client::Error> {
    let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let lease = client.lease_grant(seconds, None).await?.id();
    let lost = keep_alive(client.clone(), lease, ttl).await?;
    let mut shown = String::new();
    loop {
        let put = PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), me.clone(), Some(put))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = client.txn(txn).await?;
        if answer.succeeded() {
            let term = answer.header().map_or(0, |h| h.revision());
            return Ok(Lead { term, lost });
        }
        let leader = current(&answer.op_responses());
        if leader != shown {
            waiting(&leader);
            shown = leader;
        }
        if let Some(why) = lost.borrow().clone() {
            return Err(etcd_client::Error::LeaseKeepAliveError(why));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The leader's address from the `or_else` get of a lost campaign.
fn current(responses: &[TxnOpResponse]) -> String {
    let value = responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    String::from_utf8_lossy(&value.unwrap_or_default()).into_owned()
}

/// Keeps `lease` alive every third of `ttl`; the receiver hears why once it cannot.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
) -> Result<watch::Receiver<Option<String>>, etcd_client::Error> {
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let why = loop {
            tokio::time::sleep(ttl / 3).await;
            if let Err(e) = keeper.keep_alive().await {
                break format!("keeping the lease alive: {e}");
            }
            let answer = tokio::time::timeout(ttl / 3, answers.message()).await;
            match answer {
                Ok(Ok(Some(a))) if a.ttl() > 0 => continue,
                Ok(Ok(Some(_))) => break "the lease expired".to_string(),
                Ok(Ok(None)) => break "etcd closed the lease stream".to_string(),
                Ok(Err(e)) => break format!("keeping the lease alive: {e}"),
                Err(_) => break "etcd did not renew the lease in time".to_string(),
            }
        };
        let _ = tx.send(Some(why));
    });
    Ok(rx)
}

/// The etcd cluster as `lockstep cluster status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Each member's name and client URLs.
    pub members: Vec<(String, Vec<String>)>,
    /// The leader's address ("" when no instance leads).
    pub leader: String,
    /// Its term (the leadership key's create revision; 0 when none).
    pub term: i64,
    /// Seconds left on the leader's lease, and the seconds it was granted.
    pub lease: (i64, i64),
}

impl EtcdKv {
    /// The members, the leader, its term and its lease, as etcd has them now.
    pub fn cluster(&self) -> Result<ClusterView, StoreError> {
        let (mut client, key) = (self.client(), self.leader_key());
        wait(&self.runtime(), async move {
            let members = client.member_list().await?;
            let members = members
                .members()
                .iter()
                .map(|m| (m.name().to_string(), m.client_urls().to_vec()))
                .collect();
            let mut view = ClusterView {
                members,
                ..ClusterView::default()
            };
            let got = client.get(key, None).await?;
            if let Some(kv) = got.kvs().first() {
                view.leader = String::from_utf8_lossy(kv.value()).into_owned();
                view.term = kv.create_revision();
                let lease = client.lease_time_to_live(kv.lease(), None).await?;
                view.lease = (lease.ttl(), lease.granted_ttl());
            }
            Ok(view)
        })
    }
}
