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

/// Checks the request, fixes the head (signing its checkpoint with
/// `notary`) and returns the stream: what the RPC sends, and what
/// `audit-service export` writes to a file.
pub async fn export(
    store: Store,
    notary: &Notary,
    tenant: TenantId,
    request: ExportRequest,
) -> Result<ExportStream, Error> {
    let filter = request.filter.unwrap_or_default();
    let matcher = EventMatcher::new(&filter, "filter")?;
    let after = seq_from_proto(request.after_seq, "after_seq")?;
    let start = store
        .export_start(
            &tenant,
            request.after_seq,
            &notary.origin_of(&tenant),
            notary.key(),
        )
        .await?;
    let size = start.checkpoint.checkpoint.size;
    if request.after_seq > size {
        return Err(Error::invalid(
            "after_seq",
            format!(
                "the log has {size} events; there is nothing after seq {}",
                request.after_seq
            ),
        ));
    }
    let head = seq_from_proto(size, "after_seq")?;
    let header = EncodedExportResponse::of(&ExportResponse {
        part: Some(Part::Header(ExportHeader {
            after_seq: request.after_seq,
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
    Ok(read_ahead(stream))
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
