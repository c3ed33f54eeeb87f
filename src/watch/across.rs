//! Watch across tenants (`x-tenant-id: *`, a platform credential): one
//! stream per tenant of the tenant set, each the single-tenant stream of
//! this module with everything it promises (seq order, no gap, no repeat,
//! bounded memory, the credential checked), merged into one.
//!
//! Order: each tenant's events come in its commit (seq) order; events of
//! different tenants interleave as they are committed and read, with no
//! order between tenants. Position: a seq per tenant. Every event carries
//! its tenant and seq, and the stream's own heartbeats (every
//! `--heartbeat-secs`) list the position of every tenant it spans; a
//! client resumes with those positions and `after_seq = 0`, so tenants it
//! never heard of (new ones, or ones it had no position for) are read
//! from their first event. The tenant set is read from the registry when
//! the stream opens and again at every heartbeat: a tenant that joins it
//! (its first append, a partner assigned) is followed from its first
//! event, one that leaves it (another partner) is no longer followed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{CredentialCheck, WatchHub, WatchStream};
use crate::convert::{micros_to_timestamp, seq_from_proto, seq_to_proto};
use crate::error::Error;
use crate::filter::EventMatcher;
use crate::proto::{self, EventFilter, TenantPosition, WatchResponse, watch_response};
use crate::store::{TenantInfo, now_micros};
use crate::tenant::{PartnerId, TenantId};

/// Messages the merged stream holds for its client beyond what each
/// tenant's stream holds (whose bytes are bounded).
const MERGED_MESSAGES: usize = 16;

/// The stream a Watch across tenants answers with.
pub type AcrossStream = ReceiverStream<Result<WatchResponse, Status>>;

/// What a Watch across tenants asks for.
pub struct AcrossRequest<'a> {
    /// The partner the platform credential is limited to.
    pub partner: Option<PartnerId>,
    /// Which events; its `tenant_ids` and `partner_ids` narrow the set.
    pub filter: &'a EventFilter,
    /// Where tenants without a position start: `None`, from now; `Some(0)`,
    /// from their first event (nothing else is accepted).
    pub after_seq: Option<u64>,
    /// Where to resume each named tenant.
    pub positions: &'a [TenantPosition],
}

impl WatchHub {
    /// Opens a Watch across the tenants `request` spans (see the module);
    /// returns the stream and the tenants it spans as it opens. The stream
    /// ends with the first error of a tenant's stream (UNAUTHENTICATED
    /// once `credential` no longer stands).
    pub async fn open_across(
        &self,
        request: AcrossRequest<'_>,
        credential: Arc<dyn CredentialCheck>,
    ) -> Result<(AcrossStream, Vec<TenantId>), Error> {
        let matcher = EventMatcher::new(request.filter, "filter")?;
        let default = match request.after_seq {
            None => None,
            Some(0) => Some(0),
            Some(_) => {
                return Err(Error::invalid(
                    "after_seq",
                    "with x-tenant-id * it is unset (from now) or 0 (from each tenant's first event); \
                     resume a tenant with positions",
                ));
            }
        };
        let positions = positions(request.positions)?;
        let set = self
            .store
            .tenant_set(
                request.partner.as_ref(),
                matcher.tenant_ids(),
                matcher.partner_ids(),
            )
            .await?;
        let mut merge = Merge {
            hub: self.clone(),
            matcher,
            partner: request.partner,
            credential,
            streams: StreamMap::new(),
            positions: BTreeMap::new(),
        };
        let tenants: Vec<TenantId> = set.iter().map(|t| t.tenant.clone()).collect();
        for info in set {
            let start = positions.get(info.tenant.as_str()).copied().or(default);
            merge.follow(info, start).await?;
        }
        let (sender, receiver) = mpsc::channel(MERGED_MESSAGES);
        tokio::spawn(merge.run(sender));
        Ok((ReceiverStream::new(receiver), tenants))
    }
}

/// The positions a request names, by tenant; each tenant at most once.
fn positions(named: &[TenantPosition]) -> Result<BTreeMap<String, i64>, Error> {
    let mut positions = BTreeMap::new();
    for (i, position) in named.iter().enumerate() {
        let tenant = TenantId::parse(&position.tenant_id, &format!("positions[{i}].tenant_id"))?;
        let seq = seq_from_proto(position.seq, &format!("positions[{i}].seq"))?;
        if positions.insert(tenant.into_string(), seq).is_some() {
            return Err(Error::invalid(
                format!("positions[{i}].tenant_id"),
                "names a tenant an earlier position names",
            ));
        }
    }
    Ok(positions)
}

/// The tenants' streams being merged, and each one's position.
struct Merge {
    hub: WatchHub,
    /// The filter as given; bound to each tenant's partner per stream.
    matcher: EventMatcher,
    partner: Option<PartnerId>,
    credential: Arc<dyn CredentialCheck>,
    streams: StreamMap<String, WatchStream>,
    /// Every seq of each tenant up to its position was passed on or did
    /// not match.
    positions: BTreeMap<String, i64>,
}

impl Merge {
    /// Starts following `info`'s tenant after `start` (`None`: from now).
    async fn follow(&mut self, info: TenantInfo, start: Option<i64>) -> Result<(), Error> {
        let matcher = self
            .matcher
            .clone()
            .partner_ids_resolved()
            .bind_partner(info.partner.as_ref().map(PartnerId::as_str))
            .decidable_in_memory("filter")?;
        let (stream, at) = self
            .hub
            .open_matched(info.tenant.clone(), matcher, start, self.credential.clone())
            .await?;
        let tenant = info.tenant.into_string();
        self.positions.insert(tenant.clone(), at);
        self.streams.insert(tenant, stream);
        Ok(())
    }

    /// Passes the tenants' messages on, with a heartbeat of every
    /// position each interval, until the client leaves or a stream fails.
    async fn run(mut self, sender: mpsc::Sender<Result<WatchResponse, Status>>) {
        let period = self.hub.limits.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.hub.shutdown.clone();
        loop {
            let next = tokio::select! {
                biased;
                () = sender.closed() => return,
                () = shutdown.cancelled() => Err(Status::from(Error::Unavailable(
                    "the server is shutting down; resume from the last positions".into(),
                ))),
                _ = heartbeat.tick() => self.beat().await.map(Some).map_err(Status::from),
                Some((tenant, item)) = self.streams.next(), if !self.streams.is_empty() => {
                    item.map(|message| self.passed(&tenant, message))
                }
            };
            match next {
                Ok(Some(message)) => {
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            }
        }
    }

    /// Takes `tenant`'s `message`: an event to pass on (its seq is the
    /// tenant's position now), or a heartbeat whose position is kept.
    fn passed(&mut self, tenant: &str, message: WatchResponse) -> Option<WatchResponse> {
        let seq = match &message.kind {
            Some(watch_response::Kind::Event(event)) => event.seq,
            Some(watch_response::Kind::Heartbeat(beat)) => beat.head_seq,
            None => return None,
        };
        let at = self.positions.entry(tenant.to_owned()).or_default();
        *at = (*at).max(i64::try_from(seq).unwrap_or(i64::MAX));
        matches!(message.kind, Some(watch_response::Kind::Event(_))).then_some(message)
    }

    /// Checks the credential, follows the tenant set as the registry now
    /// has it, and returns the heartbeat of every tenant's position.
    async fn beat(&mut self) -> Result<WatchResponse, Error> {
        self.credential.confirm(now_micros()).await?;
        match self
            .hub
            .store
            .tenant_set(
                self.partner.as_ref(),
                self.matcher.tenant_ids(),
                self.matcher.partner_ids(),
            )
            .await
        {
            Ok(set) => {
                let current: std::collections::BTreeSet<String> =
                    set.iter().map(|t| t.tenant.as_str().to_owned()).collect();
                let gone: Vec<String> = self
                    .positions
                    .keys()
                    .filter(|t| !current.contains(*t))
                    .cloned()
                    .collect();
                for tenant in gone {
                    self.streams.remove(&tenant);
                    self.positions.remove(&tenant);
                }
                for info in set {
                    if !self.positions.contains_key(info.tenant.as_str()) {
                        // It joined the set after the stream opened: all of
                        // its log is new to this stream.
                        self.follow(info, Some(0)).await?;
                    }
                }
            }
            // The set is read again at the next heartbeat.
            Err(error) => tracing::warn!(%error, "watch across tenants: cannot read the tenant set"),
        }
        Ok(WatchResponse {
            kind: Some(watch_response::Kind::Heartbeat(proto::Heartbeat {
                head_seq: 0,
                time: Some(micros_to_timestamp(now_micros())),
                positions: self
                    .positions
                    .iter()
                    .map(|(tenant, seq)| TenantPosition {
                        tenant_id: tenant.clone(),
                        seq: seq_to_proto(*seq),
                    })
                    .collect(),
            })),
        })
    }
}
