//! The `audit.v1.IntegrityService` handlers: signed checkpoints and Merkle
//! proofs of the caller's tenant's log.

use tonic::{Request, Response, Status};

use super::event_id;
use crate::auth::{Scope, caller};
use crate::convert::micros_to_timestamp;
use crate::error::Error;
use crate::integrity::{Notary, SignedCheckpoint, VerifierKey};
use crate::proto::{
    Checkpoint, ConsistencyProof, GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest,
    InclusionProof, get_inclusion_proof_request::Target,
};
use crate::store::Store;
use crate::wire::server::integrity_service_server::IntegrityService;

/// The IntegrityService implementation.
#[derive(Clone)]
pub struct IntegrityApi {
    store: Store,
    notary: Notary,
}

impl IntegrityApi {
    /// Handlers over `store`, signing checkpoints with `notary`.
    pub fn new(store: Store, notary: Notary) -> Self {
        Self { store, notary }
    }

    fn to_proto(&self, signed: SignedCheckpoint) -> Checkpoint {
        checkpoint_to_proto(signed, &self.notary.verifier())
    }
}

/// A signed checkpoint as the API returns it, with the key that checks it.
pub(super) fn checkpoint_to_proto(signed: SignedCheckpoint, verifier: &VerifierKey) -> Checkpoint {
    Checkpoint {
        origin: signed.checkpoint.origin,
        tree_size: signed.checkpoint.size,
        root_hash: signed.checkpoint.root.to_vec(),
        time: Some(micros_to_timestamp(signed.checkpoint.time_micros)),
        note: signed.note,
        signature: signed.signature,
        verifier_key: verifier.encode(),
    }
}

/// `requested` (0 = `current`) checked against the current tree size.
fn tree_size(requested: u64, current: u64, field: &str) -> Result<u64, Error> {
    match requested {
        0 => Ok(current),
        size if size > current => Err(Error::invalid(
            field,
            format!("the log has {current} events; a tree of {size} does not exist (a log never shrinks)"),
        )),
        size => Ok(size),
    }
}

#[tonic::async_trait]
impl IntegrityService for IntegrityApi {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let signed = self
            .store
            .checkpoint(
                &caller.tenant,
                &self.notary.origin_of(&caller.tenant),
                self.notary.key(),
            )
            .await?;
        Ok(Response::new(self.to_proto(signed)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let request = request.into_inner();
        let current = self.store.tree_size(&caller.tenant).await?;
        let size = tree_size(request.tree_size, current, "tree_size")?;
        let seq = match request.target {
            Some(Target::Seq(0)) => return Err(Error::invalid("seq", "seqs start at 1").into()),
            Some(Target::Seq(seq)) => seq,
            Some(Target::EventId(id)) => {
                let id = event_id(&id, "event_id")?;
                let event = self.store.get(&caller.tenant, id).await?;
                u64::try_from(event.seq).unwrap_or_default()
            }
            None => return Err(Error::invalid("target", "set event_id or seq").into()),
        };
        if seq > size {
            return Err(Error::invalid(
                "tree_size",
                format!("event seq {seq} is not in a tree of {size} events"),
            )
            .into());
        }
        let proof = self.store.inclusion_proof(&caller.tenant, seq - 1, size).await?;
        Ok(Response::new(InclusionProof {
            seq,
            leaf_index: seq - 1,
            tree_size: size,
            leaf_hash: proof.leaf_hash.to_vec(),
            hashes: proof.path.iter().map(|h| h.to_vec()).collect(),
            root_hash: proof.root.to_vec(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let request = request.get_ref();
        let current = self.store.tree_size(&caller.tenant).await?;
        let second = tree_size(request.second_tree_size, current, "second_tree_size")?;
        let first = request.first_tree_size;
        if first == 0 || first > second {
            return Err(Error::invalid(
                "first_tree_size",
                format!("must be within 1..={second} (the second tree size)"),
            )
            .into());
        }
        let proof = self
            .store
            .consistency_proof(&caller.tenant, first, second)
            .await?;
        Ok(Response::new(ConsistencyProof {
            first_tree_size: first,
            second_tree_size: second,
            hashes: proof.path.iter().map(|h| h.to_vec()).collect(),
            first_root_hash: proof.first_root.to_vec(),
            second_root_hash: proof.second_root.to_vec(),
        }))
    }
}
