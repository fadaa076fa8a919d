//! Which of several coordinators on one etcd prefix leads. Each instance holds a lease
//! (kept alive every quarter of its TTL) and tries to create the leadership key
//! `PREFIX/leader` on it, in a transaction that succeeds only while the key does not
//! exist. The key's create revision is the leader's **term**: every write of the
//! store is fenced on it ([`crate::etcd::Fence`]), so once the lease expires (a paused
//! or partitioned leader) and another instance creates the key anew, the old leader's
//! next write fails and changes nothing. Losing the lease is also told to the leader
//! ([`Lead::lost`]), which stops serving: never "I think I still lead". The lease
//! outlives the loss of the member its renewals went to (see [`Keeper`]).

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::{sync::watch, time::Instant};

use crate::{
    StoreError,
    etcd::{EtcdKv, Fence, transient, wait, wait_retrying},
    etcd_route::Members,
};

/// This instance leads: its term, and how it hears that it no longer does. Keep it
/// (or a wait on [`Lead::lost`]) for as long as it serves: once it is dropped the
/// lease is no longer renewed, as for a campaign given up. A clone hears the same loss
/// and keeps the lease renewed as long as any clone is kept.
#[derive(Clone)]
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
        waiting: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<Lead, StoreError> {
        let (client, key, me) = (self.client(), self.leader_key(), me.to_string());
        let campaign = campaign_until_leading((client, self.members()), key, me, ttl, waiting);
        let lead = wait(&self.runtime(), campaign)
            .map_err(|e| StoreError::Etcd(format!("campaigning for leadership: {e}")))?;
        self.set_fence(Some(Fence {
            key: self.leader_key(),
            revision: lead.term,
        }));
        Ok(lead)
    }

    /// Gives leadership up at a clean stop, once this instance writes no more (its
    /// store synced): deletes the leadership key if it is still this term's, so that a
    /// standby leads at once rather than when the lease runs out.
    pub fn resign(&self, term: i64) -> Result<(), StoreError> {
        let (client, key) = (self.client(), self.leader_key());
        wait(&self.runtime(), async move {
            let mut client = client;
            let ours = Compare::create_revision(key.clone(), CompareOp::Equal, term);
            let txn = Txn::new().when([ours]).and_then([TxnOp::delete(key, None)]);
            client.txn(txn).await.map(drop)
        })
    }

    /// Who leads now (the leader's address), if anyone.
    pub fn leader(&self) -> Result<Option<String>, StoreError> {
        let key = self.leader_key();
        let got = self.routed(move |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })?;
        Ok(got
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

/// How long a standby waits before it campaigns again after etcd failed it.
const CAMPAIGN_AGAIN: Duration = Duration::from_millis(500);

/// Campaigns until this instance leads. An etcd outage (a call that does not get
/// through, or this instance's lease lost while it waited) starts a new campaign on a
/// new lease once etcd answers again: a standby outlives the outage it is there for.
async fn campaign_until_leading(
    (client, members): (Client, Members),
    key: Vec<u8>,
    me: String,
    ttl: Duration,
    waiting: impl Fn(&str),
) -> Result<Lead, etcd_client::Error> {
    loop {
        let clients = (client.clone(), members.clone());
        match campaign(clients, key.clone(), me.clone(), ttl, &waiting).await {
            Err(e) if transient(&e) || matches!(e, etcd_client::Error::LeaseKeepAliveError(_)) => {
                tracing::warn!("campaigning for leadership: {e}; campaigning again");
                tokio::time::sleep(CAMPAIGN_AGAIN).await;
            }
            outcome => return outcome,
        }
    }
}

async fn campaign(
    (mut client, members): (Client, Members),
    key: Vec<u8>,
    me: String,
    ttl: Duration,
    waiting: &impl Fn(&str),
) -> Result<Lead, etcd_client::Error> {
    let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let granted = client.lease_grant(seconds, None).await?;
    // etcd may grant more than asked (it has a floor of its own): the lease lives as
    // long as granted, and is renewed every quarter of that.
    let granted_ttl = Duration::from_secs(granted.ttl().max(1).unsigned_abs());
    let (lease, lost) = (
        granted.id(),
        keep_alive((client.clone(), members), granted.id(), granted_ttl).await?,
    );
    let mut shown = String::new();
    loop {
        if let Some(why) = lost.borrow().clone() {
            return Err(etcd_client::Error::LeaseKeepAliveError(why));
        }
        let put = PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), me.clone(), Some(put))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = client.txn(txn).await.map_err(lease_gone);
        #[cfg(test)]
        let answer = tests::maybe_lose(&me, answer);
        let answer = match answer {
            Ok(answer) => answer,
            // Asked again on the same lease: a put that landed, its answer lost, is
            // then found as ours below (a new campaign on a new lease would wait a TTL
            // for this one's key to expire).
            Err(e) if transient(&e) => {
                tracing::warn!("campaigning for leadership: {e}; asking again");
                tokio::time::sleep(CAMPAIGN_AGAIN).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if answer.succeeded() {
            let term = answer.header().map_or(0, |h| h.revision());
            return Ok(Lead { term, lost });
        }
        if let Some(term) = ours(&answer.op_responses(), lease) {
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

/// A campaign's put refused because this instance's lease is gone (it expired while
/// the instance was paused, before its keeper heard): a lost lease, which starts a new
/// campaign on a new one, as the keeper's own news of it does.
fn lease_gone(e: etcd_client::Error) -> etcd_client::Error {
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound => {
            etcd_client::Error::LeaseKeepAliveError(format!("the lease is gone: {}", s.message()))
        }
        _ => e,
    }
}

/// The term of a campaign whose put landed but whose answer was lost: the key the
/// `or_else` get found is on this campaign's `lease`, created at the term.
fn ours(responses: &[TxnOpResponse], lease: i64) -> Option<i64> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(got) => (got.kvs().first())
            .filter(|kv| kv.lease() == lease)
            .map(|kv| kv.create_revision()),
        _ => None,
    })
}

/// The leader's address from the `or_else` get of a lost campaign.
fn current(responses: &[TxnOpResponse]) -> String {
    let value = responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    String::from_utf8_lossy(&value.unwrap_or_default()).into_owned()
}

/// Keeps `lease` alive every quarter of `ttl`; the receiver hears why once it cannot.
async fn keep_alive(
    (client, members): (Client, Members),
    lease: i64,
    ttl: Duration,
) -> Result<watch::Receiver<Option<String>>, etcd_client::Error> {
    let mut keeper = Keeper {
        client,
        members,
        turn: 0,
        lease,
        ttl,
        stream: None,
    };
    // Opening the stream renews the lease: it expires a TTL after this at the earliest.
    let expires = Instant::now() + ttl;
    keeper.stream = Some(keeper.client.lease_keep_alive(lease).await?);
    let (tx, rx) = watch::channel(None);
    // Ends when nobody listens any more (a campaign given up for a new one).
    tokio::spawn(async move {
        tokio::select! {
            why = keeper.run(expires) => drop(tx.send(Some(why))),
            () = tx.closed() => {}
        }
    });
    Ok(rx)
}

/// How soon a renewal that failed is tried again, on a new stream.
const RENEW_AGAIN: Duration = Duration::from_millis(50);

/// One lease's renewals. They go over one stream to one member; when that stream
/// fails (its member was killed, the connection cut), the renewal is made again on a
/// new stream, which the client opens to a member that answers. It gives up only once
/// the lease would have expired by this process's clock, counted from when the last
/// renewal etcd confirmed was sent, so this instance stops leading no later than etcd
/// expires its lease; until then its writes are fenced on its term all the same.
struct Keeper {
    client: Client,
    /// After a renewal fails, the next one goes to the next member, on a client of its
    /// own: the shared client may send it to the member that just did not answer, and
    /// a frozen member (SIGSTOP, a partition that drops packets) never refuses.
    members: Members,
    /// The member the last one turned to.
    turn: usize,
    lease: i64,
    ttl: Duration,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Keeper {
    /// Renews every quarter of the TTL (etcd's own clients: every third), which leaves
    /// three quarters of it for tries on other members when one does not answer, until
    /// the lease, which expires at `expires` unless renewed, is lost; returns why.
    async fn run(&mut self, mut expires: Instant) -> String {
        loop {
            tokio::time::sleep(self.ttl / 4).await;
            expires = match self.renew_by(expires).await {
                Ok(expires) => expires,
                Err(why) => return why,
            };
        }
    }

    /// One renewal, tried again on new streams until `expires`; returns when the lease
    /// now expires. It never waits past `expires`: a member that does not answer (a
    /// partition rather than a refused connection) cannot keep this instance leading
    /// on an expired lease.
    async fn renew_by(&mut self, expires: Instant) -> Result<Instant, String> {
        let mut warned = false;
        loop {
            let sent = Instant::now();
            let renewed = tokio::time::timeout_at(expires, self.renew()).await;
            let failure = match renewed {
                Ok(Ok(left)) if left > 0 => {
                    return Ok(sent + Duration::from_secs(left.unsigned_abs()));
                }
                // Final: asking other members past it could reach a stale etcd leader
                // (etcd#15247) whose renewal would move this deadline past a lease
                // already gone.
                Ok(Ok(_)) => return Err("the lease expired".into()),
                Ok(Err(e)) => e,
                Err(_) => "no member renewed it in time".into(),
            };
            if Instant::now() + RENEW_AGAIN >= expires {
                return Err(format!(
                    "keeping the lease alive: {failure}, until it expired"
                ));
            }
            if !warned {
                tracing::warn!("keeping the lease alive: {failure}; renewing on a new stream");
                warned = true;
            }
            self.stream = None;
            tokio::time::sleep(RENEW_AGAIN).await;
            self.turn_to_next_member().await;
        }
    }

    /// Makes the next member's own client this keeper's (one member alone: the same).
    async fn turn_to_next_member(&mut self) {
        if self.members.endpoints.len() < 2 {
            return;
        }
        self.turn += 1;
        match tokio::time::timeout(self.attempt(), self.members.one(self.turn)).await {
            Ok(Ok(client)) => self.client = client,
            // It does not answer either: the next failure turns again.
            Ok(Err(e)) => tracing::warn!("keeping the lease alive: {e}"),
            Err(_) => tracing::warn!("keeping the lease alive: no answer connecting"),
        }
    }

    /// How long one try waits for etcd: a sixth of the TTL, so that a try that goes
    /// unanswered leaves time for several more before the lease would expire.
    fn attempt(&self) -> Duration {
        self.ttl / 6
    }

    /// Renews once, on the open stream or a new one (opening it renews); returns the
    /// seconds etcd says are left, 0 when the lease is gone.
    async fn renew(&mut self) -> Result<i64, String> {
        let attempt = self.attempt();
        let Some((keeper, answers)) = &mut self.stream else {
            let granted = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
            // Bounded as an answer is: a frozen member holds a new stream as long as it
            // is asked to, and the next try may go to a member that answers.
            let opening = self.client.lease_keep_alive(self.lease);
            let Ok(opened) = tokio::time::timeout(attempt, opening).await else {
                return Err("no member opened a lease stream in time".into());
            };
            return match opened {
                Ok(stream) => {
                    self.stream = Some(stream);
                    Ok(granted)
                }
                // What etcd-client says when the lease it was to keep has expired.
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => Ok(0),
                Err(e) => Err(e.to_string()),
            };
        };
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(attempt, answers.message()).await {
            Ok(Ok(Some(answer))) => Ok(answer.ttl()),
            Ok(Ok(None)) => Err("etcd closed the lease stream".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("etcd did not answer in time".into()),
        }
    }
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
        let (client, key) = (self.client(), self.leader_key());
        // Asked again while a member is down or restarting, as the store's own calls.
        wait_retrying(&self.runtime(), move || {
            cluster_view(client.clone(), key.clone())
        })
    }
}

/// The members, the leader and its lease, read in one go.
async fn cluster_view(mut client: Client, key: Vec<u8>) -> Result<ClusterView, etcd_client::Error> {
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::mpsc;

    use super::*;
    use crate::etcd::EtcdTarget;

    /// The campaigner whose next successful put is answered with an error, as if the
    /// answer were lost on the way, and the revision that put landed at.
    static LOSE: std::sync::Mutex<(Option<String>, i64)> = std::sync::Mutex::new((None, 0));

    /// Loses `me`'s answer if a test asked for it.
    pub(super) fn maybe_lose(
        me: &str,
        answer: Result<etcd_client::TxnResponse, etcd_client::Error>,
    ) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        let mut lose = LOSE.lock().unwrap();
        match &answer {
            Ok(a) if a.succeeded() && lose.0.as_deref() == Some(me) => {
                *lose = (None, a.header().map_or(0, |h| h.revision()));
                Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                    "the answer was lost (test)",
                )))
            }
            _ => answer,
        }
    }

    /// Left from stop 56: a campaign whose put landed but whose answer was lost gave
    /// the campaign up and campaigned again on a new lease, which waited a whole TTL
    /// for its own first key to expire: no leader for that long. Given the answer of
    /// the winning put lost, the campaign leads with the key that put created, at its
    /// revision, on its first lease.
    #[test]
    fn a_campaign_whose_answer_was_lost_leads_with_the_key_it_put() {
        let dir = tempfile::tempdir().unwrap();
        let member = crate::etcd_member::EtcdMember::start(dir.path()).unwrap();
        let target = EtcdTarget::parse(&member.url("t")).unwrap();
        let kv = EtcdKv::open(&target, &["t"]).unwrap();
        *LOSE.lock().unwrap() = (Some("lost-answer".into()), 0);
        let lead = kv
            .lead("lost-answer", Duration::from_secs(30), |_| {})
            .unwrap();
        let landed = LOSE.lock().unwrap().1;
        assert!(landed > 0, "the put landed");
        assert_eq!(
            lead.term, landed,
            "leads with the key its first put created"
        );
        assert_eq!(kv.leader().unwrap().as_deref(), Some("lost-answer"));
    }

    /// Review finding of stop 53: a standby whose own lease expired unknown to it (a
    /// pause past its TTL, with the leader's key gone meanwhile) put the leadership key
    /// on that lease, etcd answered "requested lease not found", and the campaign gave
    /// up: the process meant to take over exited. Given a leader and a standby
    /// waiting, when the standby's lease is revoked and the leader's key goes, then
    /// the standby campaigns again on a new lease and leads.
    #[test]
    fn a_standby_whose_lease_is_gone_campaigns_again_and_leads() {
        let dir = tempfile::tempdir().unwrap();
        let member = crate::etcd_member::EtcdMember::start(dir.path()).unwrap();
        let target = EtcdTarget::parse(&member.url("t")).unwrap();
        let (one, two) = (
            EtcdKv::open(&target, &["t"]).unwrap(),
            EtcdKv::open(&target, &["t"]).unwrap(),
        );
        let ttl = Duration::from_secs(10);
        let _leading = one.lead("one", ttl, |_| {}).unwrap();
        let (heard, waiting) = mpsc::channel();
        let standby = std::thread::spawn(move || {
            let heard = std::sync::Mutex::new(heard);
            let lead = two.lead("two", ttl, move |leader| {
                let _ = heard.lock().unwrap().send(leader.to_string());
            });
            (lead.map(|l| l.term), two)
        });
        assert_eq!(waiting.recv().unwrap(), "one", "the standby campaigns");

        let (client, key) = (one.client(), one.leader_key());
        wait(&one.runtime(), async move {
            let mut client = client;
            let got = client.get(key.clone(), None).await?;
            let leader_lease = got.kvs().first().map(|kv| kv.lease()).unwrap_or(0);
            for lease in client.leases().await?.leases() {
                if lease.id() != leader_lease {
                    client.lease_revoke(lease.id()).await?;
                }
            }
            client.delete(key, None).await.map(drop)
        })
        .unwrap();

        let (term, two) = standby.join().unwrap();
        assert!(term.is_ok(), "{term:?}");
        assert_eq!(two.leader().unwrap().as_deref(), Some("two"));
    }
}
