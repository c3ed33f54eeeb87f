//! `Export`: the tenant's log from `after_seq` to the head as of the call,
//! streamed chunk by chunk. A task of the stream's own reads the chunks
//! [`READ_AHEAD`] ahead of what tonic has taken (which it takes as the
//! HTTP/2 window allows), so the database works while the last chunk is
//! being sent, and waits when they are not taken: a slow reader slows the
//! export, and the server holds at most `READ_AHEAD + 1` chunks per stream
//! (the one being sent, and those read or being read ahead).

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::Status;

use crate::convert::{seq_from_proto, seq_to_proto};
use crate::error::Error;
use crate::filter::EventMatcher;
use crate::integrity::Notary;
use crate::proto::export_response::Part;
use crate::proto::{ExportChunk, ExportHeader, ExportRequest, ExportResponse, TreeNode};
use crate::store::{ChunkLimits, Store};
use crate::tenant::TenantId;
use crate::wire::{EncodedExportResponse, PageEvents};

/// Most events in one chunk.
pub const EXPORT_CHUNK_EVENTS: u64 = 1000;
/// Most bytes of events in one chunk (at least one event).
pub const EXPORT_CHUNK_BYTES: usize = 1024 * 1024;

/// Chunks read ahead of the one being sent.
pub const READ_AHEAD: usize = 1;

/// The stream `Export` answers with.
pub type ExportStream = Pin<Box<dyn Stream<Item = Result<EncodedExportResponse, Status>> + Send>>;

/// Where an export stream is; each step holds the checkpoint that ends it.
enum Step {
    Header(EncodedExportResponse, EncodedExportResponse),
    Chunks {
        after: i64,
        /// Most events the next chunk reads: twice what the last chunk
        /// held when it was cut by bytes, so a statement never produces
        /// many more rows than a chunk takes.
        events: u64,
        checkpoint: EncodedExportResponse,
    },
    Checkpoint(EncodedExportResponse),
    Done,
}

/// The messages of one tenant's export, before they are read ahead.
type Section = Pin<Box<dyn Stream<Item = Result<EncodedExportResponse, Status>> + Send>>;

/// Checks the request, fixes the head (signing its checkpoint with
/// `notary`) and returns the stream: what the RPC sends, and what
/// `audit-service export` writes to a file.
pub async fn export(
    store: Store,
    notary: &Notary,
    tenant: TenantId,
    request: ExportRequest,
) -> Result<ExportStream, Error> {
    if !request.from_tenant_id.is_empty() {
        return Err(Error::invalid(
            "from_tenant_id",
            "is for exports across tenants (x-tenant-id *) only",
        ));
    }
    let filter = request.filter.unwrap_or_default();
    let matcher = EventMatcher::new(&filter, "filter")?;
    Ok(read_ahead(
        section(store, notary, tenant, filter, matcher, request.after_seq).await?,
    ))
}

/// An export across tenants (`x-tenant-id: *`): one whole export per
/// tenant of `tenants` (the tenant set, ordered by id byte-wise), each
/// with its header, chunks and signed checkpoint, the next begun once one
/// ends. `request.from_tenant_id` leaves out the tenants ordering before
/// it, and `request.after_seq` applies to that tenant, which must then be
/// the first exported. The first section's checks (and its checkpoint)
/// are done before this returns; each later section fixes its tenant's
/// head when it starts.
pub async fn export_across(
    store: Store,
    notary: &Notary,
    tenants: Vec<TenantId>,
    request: ExportRequest,
) -> Result<ExportStream, Error> {
    let filter = request.filter.unwrap_or_default();
    let matcher = EventMatcher::new(&filter, "filter")?;
    let from = match request.from_tenant_id.as_str() {
        "" => None,
        id => Some(TenantId::parse(id, "from_tenant_id")?),
    };
    let mut tenants: std::collections::VecDeque<TenantId> = tenants
        .into_iter()
        .filter(|t| {
            from.as_ref()
                .is_none_or(|from| t.as_str().as_bytes() >= from.as_str().as_bytes())
        })
        .collect();
    if request.after_seq > 0 {
        match (&from, tenants.front()) {
            (None, _) => {
                return Err(Error::invalid(
                    "after_seq",
                    "across tenants it applies to the tenant from_tenant_id names; set both to resume",
                ));
            }
            (Some(from), first) if first != Some(from) => {
                return Err(Error::invalid(
                    "from_tenant_id",
                    format!(
                        "{from} is not among the tenants this export spans, so after_seq cannot apply to it"
                    ),
                ));
            }
            _ => {}
        }
    }
    let Some(first) = tenants.pop_front() else {
        return Ok(read_ahead(futures::stream::empty()));
    };
    let first = section(
        store.clone(),
        notary,
        first,
        filter.clone(),
        matcher.clone(),
        request.after_seq,
    )
    .await?;
    let notary = notary.clone();
    let rest = futures::stream::unfold(tenants, move |mut tenants| {
        let store = store.clone();
        let notary = notary.clone();
        let filter = filter.clone();
        let matcher = matcher.clone();
        async move {
            let tenant = tenants.pop_front()?;
            let next = match section(store, &notary, tenant, filter, matcher, 0).await {
                Ok(section) => section,
                Err(error) => Box::pin(futures::stream::once(std::future::ready(Err(Status::from(
                    error,
                ))))),
            };
            Some((next, tenants))
        }
    })
    .flatten();
    Ok(read_ahead(first.chain(rest)))
}

/// One tenant's export after `after_seq`: checks the position, fixes the
/// head (signing its checkpoint) and returns its messages.
async fn section(
    store: Store,
    notary: &Notary,
    tenant: TenantId,
    filter: crate::proto::EventFilter,
    matcher: EventMatcher,
    after_seq: u64,
) -> Result<Section, Error> {
    let after = seq_from_proto(after_seq, "after_seq")?;
    let start = store
        .export_start(&tenant, after_seq, &notary.origin_of(&tenant), notary.key())
        .await?;
    let size = start.checkpoint.checkpoint.size;
    if after_seq > size {
        return Err(Error::invalid(
            "after_seq",
            format!(
                "the log has {size} events; there is nothing after seq {}",
                after_seq
            ),
        ));
    }
    let head = seq_from_proto(size, "after_seq")?;
    let header = EncodedExportResponse::of(&ExportResponse {
        part: Some(Part::Header(ExportHeader {
            after_seq,
            tree_size: size,
            prefix: start.prefix.iter().map(|h| h.to_vec()).collect(),
            tenant_id: tenant.as_str().to_owned(),
            filter: Some(filter),
        })),
    });
    let checkpoint = EncodedExportResponse::of(&ExportResponse {
        part: Some(Part::Checkpoint(super::integrity::checkpoint_to_proto(
            start.checkpoint,
            &notary.verifier(),
        ))),
    });
    let stream = futures::stream::unfold(Step::Header(header, checkpoint), move |step| {
        let store = store.clone();
        let matcher = matcher.clone();
        let tenant = tenant.clone();
        async move {
            match step {
                Step::Header(header, checkpoint) => {
                    let next = if after >= head {
                        Step::Checkpoint(checkpoint)
                    } else {
                        Step::Chunks {
                            after,
                            events: EXPORT_CHUNK_EVENTS,
                            checkpoint,
                        }
                    };
                    Some((Ok(header), next))
                }
                Step::Chunks {
                    after,
                    events,
                    checkpoint,
                } => {
                    let limits = ChunkLimits {
                        events,
                        bytes: EXPORT_CHUNK_BYTES,
                    };
                    match store
                        .export_chunk::<PageEvents>(&tenant, &matcher, after, head, limits)
                        .await
                    {
                        Ok(chunk) => {
                            let through = chunk.through;
                            let held = u64::try_from(chunk.events.count()).unwrap_or(u64::MAX);
                            let next = if through >= head {
                                Step::Checkpoint(checkpoint)
                            } else {
                                Step::Chunks {
                                    after: through,
                                    events: held.saturating_mul(2).clamp(2, EXPORT_CHUNK_EVENTS),
                                    checkpoint,
                                }
                            };
                            Some((Ok(chunk_to_proto(chunk)), next))
                        }
                        Err(error) => Some((Err(Status::from(Error::from(error))), Step::Done)),
                    }
                }
                Step::Checkpoint(message) => Some((Ok(message), Step::Done)),
                Step::Done => None,
            }
        }
    });
    Ok(Box::pin(stream))
}

/// `stream` polled by a task of its own up to [`READ_AHEAD`] messages ahead
/// of the returned stream's reader. The task ends when the stream does or
/// when the reader lets go (before it reads another message).
fn read_ahead(
    stream: impl Stream<Item = Result<EncodedExportResponse, Status>> + Send + 'static,
) -> ExportStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // A chunk is read only once there is room for it: never more than
        // READ_AHEAD read and not yet taken.
        while let Ok(permit) = sender.reserve().await {
            match stream.next().await {
                Some(message) => permit.send(message),
                None => break,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// Events an export message hands over whole (for its access record).
pub(super) fn events_in(message: &EncodedExportResponse) -> u64 {
    message.whole_events()
}

/// The chunk's message: its events as the rows wrote them, then the rest.
fn chunk_to_proto(chunk: crate::store::ExportChunk<PageEvents>) -> EncodedExportResponse {
    let rest = ExportChunk {
        events: Vec::new(),
        leaf_hashes: chunk.leaves.iter().map(|h| h.to_vec()).collect(),
        skipped: chunk
            .skipped
            .into_iter()
            .map(|(id, hash)| TreeNode {
                level: id.level,
                index: id.index,
                hash: hash.to_vec(),
            })
            .collect(),
        resume_after_seq: seq_to_proto(chunk.through),
    };
    EncodedExportResponse::chunk(chunk.events, chunk.whole, &rest)
}
