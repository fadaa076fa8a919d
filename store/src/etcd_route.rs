//! Which etcd member the store's calls go to: one member at a time, and the next one
//! after a call to it failed. The balanced client etcd-client offers spreads calls
//! over every member and does not know which one left a call unanswered, so with one
//! member of three frozen (its connections open, nothing answered) call after call
//! went to it again and waited its whole timeout: 10 to 25 s a release (stop 63, t91
//! `releases_go_on_while_an_etcd_member_is_frozen`). Here a frozen member costs the
//! one call that found it. Every member serves every call (reads are linearizable,
//! writes go through the cluster's leader), so a single member loses nothing.

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use etcd_client::{Client, ConnectOptions, KvClient};

/// The members of the cluster and the options to connect with: a client of one member
/// alone goes where it is sent, which the shared, balanced client does not promise.
#[derive(Clone)]
pub(crate) struct Members {
    pub(crate) endpoints: Vec<String>,
    pub(crate) options: ConnectOptions,
}

impl Members {
    /// A client of member `i` (modulo their number) alone; lazy: it connects when
    /// first called.
    pub(crate) async fn one(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let endpoint = self.endpoints[i % self.endpoints.len().max(1)].clone();
        Client::connect([endpoint], Some(self.options.clone())).await
    }
}

/// The member calls go to now, and a client of each member once it was used.
pub(crate) struct Route {
    members: Members,
    /// Counts up by one at each failure: the member is `turn` modulo their number.
    turn: AtomicUsize,
    clients: Mutex<Vec<Option<KvClient>>>,
    /// The largest answer a client takes.
    max_answer: usize,
}

impl Route {
    /// Starts at the first member.
    pub(crate) fn new(members: Members, max_answer: usize) -> Self {
        let clients = Mutex::new(vec![None; members.endpoints.len().max(1)]);
        Route {
            members,
            turn: AtomicUsize::new(0),
            clients,
            max_answer,
        }
    }

    /// The turn a call starts on (given to [`Route::failed`] if the call fails).
    pub(crate) fn turn(&self) -> usize {
        self.turn.load(Ordering::Acquire)
    }

    /// A client of `turn`'s member, connected on first use.
    pub(crate) async fn client(&self, turn: usize) -> Result<KvClient, etcd_client::Error> {
        let slot = turn % self.slots();
        if let Some(kv) = self.lock()[slot].clone() {
            return Ok(kv);
        }
        let client = self.members.one(slot).await?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(self.max_answer);
        self.lock()[slot] = Some(kv.clone());
        Ok(kv)
    }

    /// A call on `turn` failed transiently: the next call goes to the next member,
    /// unless another call already moved on from `turn` (two calls failing together
    /// on one member skip one member, not two).
    pub(crate) fn failed(&self, turn: usize) {
        let next = turn.wrapping_add(1);
        let _ = self
            .turn
            .compare_exchange(turn, next, Ordering::AcqRel, Ordering::Acquire);
    }

    fn slots(&self) -> usize {
        self.members.endpoints.len().max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<KvClient>>> {
        // Each slot is set by one assignment: a poisoned lock holds whole clients.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(members: usize) -> Route {
        let endpoints = (0..members)
            .map(|i| format!("http://127.0.0.1:{i}"))
            .collect();
        let options = ConnectOptions::new();
        Route::new(Members { endpoints, options }, 1)
    }

    #[test]
    fn a_failure_moves_calls_to_the_next_member_once() {
        let r = route(3);
        let turn = r.turn();
        r.failed(turn);
        r.failed(turn);
        assert_eq!(
            r.turn(),
            turn + 1,
            "two failures on one turn move one member"
        );
        r.failed(r.turn());
        assert_eq!(r.turn() % 3, 2);
        r.failed(r.turn());
        assert_eq!(r.turn() % 3, 0, "after the last member, the first again");
    }
}
