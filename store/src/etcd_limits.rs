//! What a coordinator needs of one etcd transaction, checked before it serves.
//!
//! etcd refuses a transaction of more than `--max-txn-ops` operations (128 by default)
//! or a request of more than `--max-request-bytes` (1.5 MiB). A coordinator writes
//! each step of a transaction in one etcd transaction (a COMMIT decision: about four
//! keys per project it moves, with its events), and its group commit merges the steps
//! of concurrent transactions. Past etcd's defaults such a write is refused, which
//! stops the leader (a failed write is fatal), and the same release retried stops the
//! next one. So a coordinator on etcd asks the members, before it campaigns, whether
//! they take a transaction of [`REQUIRED_TXN_OPS`] operations and
//! [`REQUIRED_REQUEST_BYTES`] bytes, and refuses to start when they do not.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::{
    EtcdKv, StoreError,
    etcd::{REQUIRED_REQUEST_BYTES, REQUIRED_TXN_OPS, wait_retrying},
};

impl EtcdKv {
    /// Asks the members for a read-only transaction as large as a coordinator's writes
    /// may be. It writes nothing: its compare (a value of a key nobody writes) fails, so
    /// etcd runs its else branch, reads. `Ok(Err(why))`: the members refuse it, `why`
    /// names the flags to raise; `Err`: etcd could not be asked.
    pub fn check_limits(&self) -> Result<Result<(), String>, StoreError> {
        let probe = self.limits_probe();
        let kv = self.kv_client();
        wait_retrying(&self.runtime(), move || {
            let (mut kv, probe) = (kv.clone(), probe.clone());
            async move {
                match kv.txn(probe).await {
                    Ok(_) => Ok(Ok(())),
                    Err(etcd_client::Error::GRpcStatus(s)) if too_large(s.code()) => {
                        Ok(Err(refusal(s.message())))
                    }
                    Err(e) => Err(e),
                }
            }
        })
    }

    fn limits_probe(&self) -> Txn {
        let mut probe_key = self.prefix().to_vec();
        probe_key.extend_from_slice(b"limits-probe");
        // The gRPC limit etcd sets is --max-request-bytes plus 512 KiB of overhead: a
        // value that much smaller passes only a member at the limit or above it.
        let value = vec![0u8; REQUIRED_REQUEST_BYTES];
        let reads = vec![TxnOp::get(probe_key.clone(), None); REQUIRED_TXN_OPS];
        let when = Compare::value(probe_key, CompareOp::Equal, value);
        Txn::new().when(vec![when]).or_else(reads)
    }
}

/// etcd's answers to a transaction beyond its limits: INVALID_ARGUMENT "too many
/// operations in txn request", RESOURCE_EXHAUSTED "received message larger than max".
fn too_large(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
    )
}

fn refusal(why: &str) -> String {
    format!(
        "etcd refused a transaction of {REQUIRED_TXN_OPS} operations and \
         {REQUIRED_REQUEST_BYTES} bytes, as large as a coordinator's writes may be ({why}): \
         start every member with --max-txn-ops {REQUIRED_TXN_OPS} (or more) and \
         --max-request-bytes {REQUIRED_REQUEST_BYTES} (or more); README \"High \
         availability on etcd\""
    )
}
