//! Platform streams across tenants: `Export` and `Watch` with
//! `x-tenant-id: *` (issue 23). An export is one proven section per tenant
//! of the set; a watch delivers each tenant's events in seq order, its
//! heartbeats carry a position per tenant, and resuming from them loses
//! and repeats nothing. The expression field `partner_id` too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use audit_service::proto::export_response::Part;
use audit_service::proto::watch_response::Kind;
use audit_service::proto::{
    AuditEvent, EventFilter, ExportRequest, QueryRequest, TenantPosition, WatchRequest, WatchResponse,
};
use tonic::{Code, Streaming};

use crate::export::Export;
use crate::fixtures::status_of;
use crate::on_both_backends;
use crate::platform_fixtures::{cli, fresh, fresh_action, platform_token, tenants_with};
use crate::support::{Backend, Caller, Credential, TestServer, assert_status, end_status, event};

on_both_backends!(
    an_export_across_tenants_is_one_proven_section_per_tenant,
    an_export_across_tenants_resumes_at_a_tenant_and_seq,
    a_partner_scoped_key_exports_and_watches_exactly_its_partners_tenants,
    a_watch_across_tenants_delivers_each_tenants_events_in_seq_order,
    a_watch_across_tenants_resumes_from_its_positions_losing_and_repeating_nothing,
    platform_exports_and_watches_are_recorded_in_the_platform_log,
    a_revoked_platform_key_ends_its_watch_across_tenants,
    a_watch_across_tenants_takes_only_after_seq_zero,
    the_partner_id_expression_selects_the_tenants_of_a_partner,
    a_watch_across_tenants_follows_tenants_joining_and_leaving_the_partner,
    a_tenants_own_watch_and_legal_holds_treat_partner_id_as_documented,
);

/// The scopes of the platform administrators these tests sign in as.
const ADMIN: &str = "audit:admin audit:read";

/// How long a stream may stay silent before a test gives up on it.
const PATIENCE: Duration = Duration::from_secs(20);

/// A server whose Watch heartbeats come every second.
async fn heartbeat_server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |config| config.heartbeat_secs = 1).await
}

/// A platform administrator reading every tenant, by JWT as `sub`.
async fn platform(server: &TestServer, sub: &str) -> Caller {
    server
        .caller_with("*", Credential::Bearer(platform_token(sub, ADMIN, None)))
        .await
}

fn ids(tenants: &[Caller]) -> Vec<String> {
    tenants.iter().map(|t| t.tenant.clone()).collect()
}

/// A fresh partner holding `members`, and a platform key limited to it:
/// (partner, key id, key).
fn partner_with(server: &TestServer, members: &[Caller]) -> (String, String, String) {
    let partner = fresh("partner");
    for member in members {
        cli(server, &["tenants", "set-partner", &member.tenant, &partner]);
    }
    let (id, key) = platform_key(server, &["--partner", &partner]);
    (partner, id, key)
}

/// A platform key minted with `keys create --platform EXTRA...`: (id, key).
fn platform_key(server: &TestServer, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "keys",
        "create",
        "--platform",
        "--scope",
        "audit:admin",
        "--scope",
        "audit:read",
    ];
    args.extend_from_slice(extra);
    let created = cli(server, &args);
    let id = created
        .split_whitespace()
        .nth(3)
        .expect("Created API key <id> ...")
        .to_owned();
    let key = created.lines().last().expect("key").trim().to_owned();
    (id, key)
}

/// The sections of an export across tenants, as received.
async fn export_across(
    caller: &mut Caller,
    filter: EventFilter,
    from_tenant_id: &str,
    after_seq: u64,
) -> Result<Vec<Export>, tonic::Status> {
    let request = caller.request(ExportRequest {
        filter: Some(filter),
        after_seq,
        from_tenant_id: from_tenant_id.to_owned(),
    });
    let mut stream = caller.client.export(request).await?.into_inner();
    let mut sections: Vec<Export> = Vec::new();
    let mut open: Option<(
        audit_service::proto::ExportHeader,
        Vec<audit_service::proto::ExportChunk>,
    )> = None;
    while let Some(message) = stream.message().await? {
        match message.part.expect("a part") {
            Part::Header(header) => {
                assert!(open.is_none(), "a header inside a section");
                open = Some((header, Vec::new()));
            }
            Part::Chunk(chunk) => open.as_mut().expect("a chunk after its header").1.push(chunk),
            Part::Checkpoint(checkpoint) => {
                let (header, chunks) = open.take().expect("a checkpoint ends a section");
                sections.push(Export {
                    header,
                    chunks,
                    checkpoint,
                });
            }
        }
    }
    assert!(open.is_none(), "the export ended inside a section");
    Ok(sections)
}

/// Checks each section against its own signed checkpoint and returns the
/// tenant of each.
fn checked_tenants(sections: &[Export]) -> Vec<String> {
    sections
        .iter()
        .map(|section| {
            let key = section.checkpoint.verifier_key.clone();
            section.check(&key).expect("the section checks out");
            let tenant = &section.header.tenant_id;
            assert!(
                section.events().all(|e| &e.tenant_id == tenant),
                "a section holds its tenant's events only"
            );
            assert!(
                section
                    .checkpoint
                    .note
                    .lines()
                    .next()
                    .expect("origin")
                    .ends_with(&format!("/{tenant}")),
                "the checkpoint is of {tenant}'s log: {}",
                section.checkpoint.note
            );
            tenant.clone()
        })
        .collect()
}

fn of_tenants(tenants: &[Caller], action: &str) -> EventFilter {
    EventFilter {
        tenant_ids: ids(tenants),
        actions: vec![action.to_owned()],
        ..EventFilter::default()
    }
}

async fn an_export_across_tenants_is_one_proven_section_per_tenant(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("export");
    let tenants = tenants_with(&server, 3, 3, &action).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let sections = export_across(&mut admin, of_tenants(&tenants, &action), "", 0)
        .await
        .expect("export across tenants");
    assert_eq!(
        checked_tenants(&sections),
        ids(&tenants),
        "tenant by tenant, in id order"
    );
    for section in &sections {
        let seqs: Vec<u64> = section.events().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "{}", section.header.tenant_id);
        assert_eq!(section.header.tree_size, 3);
    }
    // An event of another action is covered by the proof, not sent.
    let mut first = server.caller_for(&tenants[0].tenant).await;
    first.append(vec![event("other.action", "bob")]).await;
    let sections = export_across(&mut admin, of_tenants(&tenants, &action), "", 0)
        .await
        .expect("export across tenants");
    assert_eq!(checked_tenants(&sections), ids(&tenants));
    assert_eq!(sections[0].header.tree_size, 4);
    assert_eq!(sections[0].events().count(), 3);
}

async fn an_export_across_tenants_resumes_at_a_tenant_and_seq(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("resume");
    let tenants = tenants_with(&server, 3, 3, &action).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let filter = of_tenants(&tenants, &action);
    let sections = export_across(&mut admin, filter.clone(), &tenants[1].tenant, 2)
        .await
        .expect("resumed export");
    assert_eq!(checked_tenants(&sections), ids(&tenants[1..]));
    let seqs: Vec<Vec<u64>> = sections
        .iter()
        .map(|s| s.events().map(|e| e.seq).collect())
        .collect();
    assert_eq!(seqs, [vec![3], vec![1, 2, 3]]);

    // A position beyond the first tenant's log is refused, naming after_seq.
    let status = export_across(&mut admin, filter.clone(), &tenants[1].tenant, 9)
        .await
        .err()
        .expect("refused");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("after_seq"),
    );
    // So is after_seq without a tenant to apply it to.
    let status = export_across(&mut admin, filter, "", 1)
        .await
        .err()
        .expect("refused");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("after_seq"),
    );
    // from_tenant_id in a tenant's own call is refused.
    let mut own = server.caller_for(&tenants[0].tenant).await;
    let status = export_across(&mut own, EventFilter::default(), &tenants[0].tenant, 0)
        .await
        .err()
        .expect("refused");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("from_tenant_id"),
    );
}

/// Opens a Watch of `caller` with `filter`, `after_seq` and `positions`.
async fn watch(
    caller: &mut Caller,
    filter: EventFilter,
    after_seq: Option<u64>,
    positions: &BTreeMap<String, u64>,
) -> Result<Streaming<WatchResponse>, tonic::Status> {
    let request = caller.request(WatchRequest {
        filter: Some(filter),
        after_seq,
        positions: positions
            .iter()
            .map(|(tenant_id, seq)| TenantPosition {
                tenant_id: tenant_id.clone(),
                seq: *seq,
            })
            .collect(),
    });
    Ok(caller.client.watch(request).await?.into_inner())
}

async fn next(stream: &mut Streaming<WatchResponse>) -> Kind {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(message))) => message.kind.expect("a kind"),
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        Err(_) => panic!("no message within {PATIENCE:?}"),
    }
}

/// What a subscriber keeps: the events it got, by tenant, and the position
/// to resume each tenant from.
#[derive(Default)]
struct Received {
    seqs: BTreeMap<String, Vec<u64>>,
    positions: BTreeMap<String, u64>,
    /// The tenants the last heartbeat named.
    last_beat: Option<BTreeSet<String>>,
}

impl Received {
    fn take(&mut self, kind: Kind) {
        match kind {
            Kind::Event(e) => {
                assert!(
                    !e.tenant_id.is_empty(),
                    "an event across tenants names its tenant"
                );
                self.seqs.entry(e.tenant_id.clone()).or_default().push(e.seq);
                let at = self.positions.entry(e.tenant_id).or_default();
                *at = (*at).max(e.seq);
            }
            Kind::Heartbeat(beat) => {
                let mut named = BTreeSet::new();
                for position in beat.positions {
                    let at = self.positions.entry(position.tenant_id.clone()).or_default();
                    assert!(position.seq >= *at, "a heartbeat never goes back");
                    *at = position.seq;
                    named.insert(position.tenant_id);
                }
                self.last_beat = Some(named);
            }
        }
    }

    fn count(&self) -> usize {
        self.seqs.values().map(Vec::len).sum()
    }
}

/// Reads `stream` until `done` holds for what was received.
async fn read_until(
    stream: &mut Streaming<WatchResponse>,
    received: &mut Received,
    done: impl Fn(&Received) -> bool,
) {
    while !done(received) {
        received.take(next(stream).await);
    }
}

fn seqs_upto(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

async fn a_partner_scoped_key_exports_and_watches_exactly_its_partners_tenants(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("partner");
    let mut tenants = tenants_with(&server, 3, 2, &action).await;
    let (_, _, key) = partner_with(&server, &tenants[..2]);
    let members: BTreeSet<String> = ids(&tenants[..2]).into_iter().collect();
    let mut reseller = server.caller_with("*", Credential::ApiKey(key)).await;

    // Export with no filter at all: exactly the partner's tenants.
    let sections = export_across(&mut reseller, EventFilter::default(), "", 0)
        .await
        .expect("export");
    let exported: BTreeSet<String> = checked_tenants(&sections).into_iter().collect();
    assert_eq!(exported, members);

    // Watch with no filter from the start: the partner's tenants' events,
    // and heartbeats naming exactly them.
    let mut stream = watch(&mut reseller, EventFilter::default(), Some(0), &BTreeMap::new())
        .await
        .expect("watch");
    let mut received = Received::default();
    read_until(&mut stream, &mut received, |r| {
        r.count() == 4 && r.last_beat.is_some()
    })
    .await;
    assert_eq!(received.last_beat.as_ref(), Some(&members));
    for member in &members {
        assert_eq!(received.seqs[member], seqs_upto(2));
    }
    // Live: the outsider appends first, then a member; the member's event
    // comes, the outsider's never.
    tenants[2].append(vec![event(&action, "outsider")]).await;
    tenants[0].append(vec![event(&action, "member")]).await;
    let member = tenants[0].tenant.clone();
    read_until(&mut stream, &mut received, |r| {
        r.positions.get(&member) == Some(&3) && r.count() == 5
    })
    .await;
    // A heartbeat after it still names only the members.
    received.last_beat = None;
    read_until(&mut stream, &mut received, |r| r.last_beat.is_some()).await;
    assert_eq!(received.last_beat.as_ref(), Some(&members));
    assert!(
        !received.seqs.contains_key(&tenants[2].tenant),
        "never the outsider's events"
    );
}

async fn a_watch_across_tenants_delivers_each_tenants_events_in_seq_order(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("watch");
    let mut tenants = tenants_with(&server, 3, 2, &action).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let filter = of_tenants(&tenants, &action);
    // Live from now: a heartbeat first fixes each tenant's position.
    let mut stream = watch(&mut admin, filter, None, &BTreeMap::new())
        .await
        .expect("watch");
    let mut received = Received::default();
    read_until(&mut stream, &mut received, |r| r.last_beat.is_some()).await;
    assert_eq!(received.count(), 0, "nothing from before the stream opened");
    let all: BTreeSet<String> = ids(&tenants).into_iter().collect();
    assert_eq!(received.last_beat.as_ref(), Some(&all));
    assert!(
        received.positions.values().all(|seq| *seq == 2),
        "{:?}",
        received.positions
    );

    for round in 0..3 {
        for tenant in tenants.iter_mut() {
            tenant
                .append(vec![
                    event(&action, &format!("r{round}")),
                    event("other.action", "x"),
                ])
                .await;
        }
    }
    read_until(&mut stream, &mut received, |r| r.count() == 9).await;
    for tenant in &tenants {
        assert_eq!(
            received.seqs[&tenant.tenant],
            [3, 5, 7],
            "{}: in seq order, matching only",
            tenant.tenant
        );
    }
}

async fn a_watch_across_tenants_resumes_from_its_positions_losing_and_repeating_nothing(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("resume");
    let tenants = tenants_with(&server, 3, 1, &action).await;
    let filter = of_tenants(&tenants, &action);
    const APPENDS: u64 = 40;
    // Every tenant keeps appending, one event at a time, while the
    // subscriber reads, leaves and comes back.
    let mut writers = Vec::new();
    for tenant in &tenants {
        let mut writer = server.caller_for(&tenant.tenant).await;
        let action = action.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..APPENDS {
                writer.append(vec![event(&action, &format!("w{i}"))]).await;
            }
        }));
    }
    let mut admin = platform(&server, &fresh("operator")).await;
    let mut received = Received::default();
    let mut stream = watch(&mut admin, filter.clone(), Some(0), &BTreeMap::new())
        .await
        .expect("watch");
    read_until(&mut stream, &mut received, |r| r.count() >= 10).await;
    drop(stream);
    // Resume twice, from the positions kept so far.
    for leave_at in [30, 60] {
        let mut stream = watch(&mut admin, filter.clone(), Some(0), &received.positions)
            .await
            .expect("resume");
        read_until(&mut stream, &mut received, |r| r.count() >= leave_at).await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let total = usize::try_from(3 * (APPENDS + 1)).unwrap();
    let mut stream = watch(&mut admin, filter, Some(0), &received.positions)
        .await
        .expect("resume");
    read_until(&mut stream, &mut received, |r| r.count() >= total).await;
    for tenant in &tenants {
        assert_eq!(
            received.seqs[&tenant.tenant],
            seqs_upto(APPENDS + 1),
            "{}: every event once, in order",
            tenant.tenant
        );
    }
}

/// The `audit.log.read` records of `operator`'s reads of `rpc`.
async fn records_of(server: &TestServer, operator: &str, rpc: &str) -> Vec<AuditEvent> {
    let token = platform_token(operator, "audit:read", None);
    let mut log = server.caller_with("_platform", Credential::Bearer(token)).await;
    let filter = EventFilter {
        actions: vec!["audit.log.read".into()],
        actor_ids: vec![operator.to_owned()],
        expression: format!("metadata.rpc = \"{rpc}\""),
        ..EventFilter::default()
    };
    log.query_all(filter, "seq asc", 100).await
}

fn metadata_tenants(record: &AuditEvent) -> BTreeSet<String> {
    use prost_types::value::Kind as Value;
    let Some(Value::ListValue(list)) = &record.metadata.as_ref().expect("metadata").fields["tenants"].kind
    else {
        panic!("no tenants in {record:?}");
    };
    list.values
        .iter()
        .filter_map(|v| match &v.kind {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn metadata_number(record: &AuditEvent, name: &str) -> f64 {
    use prost_types::value::Kind as Value;
    match record.metadata.as_ref().expect("metadata").fields[name].kind {
        Some(Value::NumberValue(n)) => n,
        ref other => panic!("{name} is {other:?}"),
    }
}

async fn platform_exports_and_watches_are_recorded_in_the_platform_log(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("recorded");
    let tenants = tenants_with(&server, 2, 2, &action).await;
    let operator = fresh("operator");
    let mut admin = platform(&server, &operator).await;
    let all: BTreeSet<String> = ids(&tenants).into_iter().collect();

    export_across(&mut admin, of_tenants(&tenants, &action), "", 0)
        .await
        .expect("export");
    // Written before the export's end went out.
    let records = records_of(&server, &operator, "Export").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].resource.as_ref().map(|r| r.id.as_str()), Some("*"));
    assert_eq!(metadata_tenants(&records[0]), all);
    assert_eq!(metadata_number(&records[0], "returned"), 4.0);

    let mut stream = watch(
        &mut admin,
        of_tenants(&tenants, &action),
        Some(0),
        &BTreeMap::new(),
    )
    .await
    .expect("watch");
    let mut received = Received::default();
    read_until(&mut stream, &mut received, |r| r.count() == 4).await;
    drop(stream);
    // The record is written once the stream has ended.
    let mut records = Vec::new();
    for _ in 0..200 {
        records = records_of(&server, &operator, "Watch").await;
        if !records.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(metadata_tenants(&records[0]), all);
}

async fn a_revoked_platform_key_ends_its_watch_across_tenants(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("revoked");
    let mut tenants = tenants_with(&server, 2, 1, &action).await;
    let (id, key) = platform_key(&server, &[]);
    let mut admin = server.caller_with("*", Credential::ApiKey(key)).await;
    let mut stream = watch(
        &mut admin,
        of_tenants(&tenants, &action),
        Some(0),
        &BTreeMap::new(),
    )
    .await
    .expect("watch");
    let mut received = Received::default();
    read_until(&mut stream, &mut received, |r| r.count() == 2).await;
    cli(&server, &["keys", "revoke", &id]);
    tenants[0].append(vec![event(&action, "after")]).await;
    let status = end_status(&mut stream, PATIENCE).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

async fn a_watch_across_tenants_takes_only_after_seq_zero(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenants = tenants_with(&server, 1, 1, &fresh_action("bad")).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let status = watch(&mut admin, EventFilter::default(), Some(5), &BTreeMap::new())
        .await
        .expect_err("refused");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("after_seq"),
    );
    // Positions are for reads across tenants only.
    let mut own = server.caller_for(&tenants[0].tenant).await;
    let positions = BTreeMap::from([(tenants[0].tenant.clone(), 1)]);
    let status = watch(&mut own, EventFilter::default(), Some(0), &positions)
        .await
        .expect_err("refused");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("positions"),
    );
}

async fn the_partner_id_expression_selects_the_tenants_of_a_partner(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("partner_expr");
    let tenants = tenants_with(&server, 3, 1, &action).await;
    let (partner, _, _) = partner_with(&server, &tenants[..2]);
    let members: BTreeSet<String> = ids(&tenants[..2]).into_iter().collect();
    let mut admin = platform(&server, &fresh("operator")).await;
    let by_partner = |expression: String| EventFilter {
        expression,
        ..of_tenants(&tenants, &action)
    };

    let got: BTreeSet<String> = admin
        .query_all(by_partner(format!("partner_id = \"{partner}\"")), "seq desc", 10)
        .await
        .into_iter()
        .map(|e| e.tenant_id)
        .collect();
    assert_eq!(got, members);
    // Its negation includes the tenant of no partner.
    let got: Vec<String> = admin
        .query_all(
            by_partner(format!("NOT partner_id = \"{partner}\"")),
            "seq desc",
            10,
        )
        .await
        .into_iter()
        .map(|e| e.tenant_id)
        .collect();
    assert_eq!(got, [tenants[2].tenant.clone()]);
    let got = admin
        .query_all(by_partner("partner_id:*".into()), "seq desc", 10)
        .await;
    assert_eq!(got.len(), 2, "present: the tenants that have a partner");

    // In a tenant's own call it is the caller's own partner.
    let mut member = server.caller_for(&tenants[0].tenant).await;
    let mine = EventFilter {
        expression: format!("partner_id = \"{partner}\""),
        ..EventFilter::default()
    };
    assert_eq!(member.query_all(mine.clone(), "seq desc", 10).await.len(), 1);
    let mut outsider = server.caller_for(&tenants[2].tenant).await;
    assert!(outsider.query_all(mine, "seq desc", 10).await.is_empty());

    // A bad comparison names the byte offset, as the language does for
    // any text field (`actor.name` is as long as `partner_id`).
    async fn refusal(admin: &mut Caller, expression: &str) -> tonic::Status {
        let request = admin.request(QueryRequest {
            filter: Some(EventFilter {
                expression: expression.to_owned(),
                ..EventFilter::default()
            }),
            ..QueryRequest::default()
        });
        status_of(admin.client.query(request).await)
    }
    let status = refusal(&mut admin, "action = \"x\" AND partner_id > ").await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter.expression"),
    );
    let text_field = refusal(&mut admin, "action = \"x\" AND actor.name > ").await;
    assert_eq!(
        status.message().replace("partner_id", "FIELD"),
        text_field.message().replace("actor.name", "FIELD")
    );
    assert!(status.message().contains("at 30"), "{status:?}");

    // A Watch across tenants applies it per tenant.
    let mut stream = watch(
        &mut admin,
        by_partner(format!("partner_id = \"{partner}\"")),
        Some(0),
        &BTreeMap::new(),
    )
    .await
    .expect("watch");
    let mut received = Received::default();
    // Until the stream has passed every tenant's first event.
    read_until(&mut stream, &mut received, |r| {
        r.count() >= 2 && r.positions.len() == 3 && r.positions.values().all(|seq| *seq >= 1)
    })
    .await;
    let got: BTreeSet<String> = received.seqs.keys().cloned().collect();
    assert_eq!(got, members);
}

async fn a_watch_across_tenants_follows_tenants_joining_and_leaving_the_partner(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("joining");
    let mut tenants = tenants_with(&server, 2, 2, &action).await;
    let (partner, _, key) = partner_with(&server, &tenants[..1]);
    let (member, joiner) = (tenants[0].tenant.clone(), tenants[1].tenant.clone());
    let mut reseller = server.caller_with("*", Credential::ApiKey(key)).await;
    let mut stream = watch(&mut reseller, EventFilter::default(), None, &BTreeMap::new())
        .await
        .expect("watch");
    let mut received = Received::default();
    read_until(&mut stream, &mut received, |r| r.last_beat.is_some()).await;
    assert_eq!(received.last_beat, Some(BTreeSet::from([member.clone()])));

    // Assigned to the partner while the stream is open: followed from its
    // first event, its earlier events included.
    cli(&server, &["tenants", "set-partner", &joiner, &partner]);
    tenants[1].append(vec![event(&action, "after joining")]).await;
    read_until(&mut stream, &mut received, |r| {
        r.seqs.get(&joiner).is_some_and(|s| s.len() == 3)
    })
    .await;
    assert_eq!(received.seqs[&joiner], seqs_upto(3));

    // Moved to no partner: no longer followed, never delivered again.
    cli(&server, &["tenants", "clear-partner", &joiner]);
    received.last_beat = None;
    read_until(&mut stream, &mut received, |r| {
        r.last_beat.as_ref() == Some(&BTreeSet::from([member.clone()]))
    })
    .await;
    tenants[1].append(vec![event(&action, "after leaving")]).await;
    tenants[0].append(vec![event(&action, "member")]).await;
    read_until(&mut stream, &mut received, |r| {
        r.seqs.get(&member).is_some_and(|s| s.len() == 1)
    })
    .await;
    received.last_beat = None;
    read_until(&mut stream, &mut received, |r| r.last_beat.is_some()).await;
    assert_eq!(received.seqs[&joiner], seqs_upto(3), "nothing after it left");
}

async fn a_tenants_own_watch_and_legal_holds_treat_partner_id_as_documented(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let action = fresh_action("own_partner");
    let tenants = tenants_with(&server, 2, 2, &action).await;
    let (partner, _, _) = partner_with(&server, &tenants[..1]);
    let filter = EventFilter {
        expression: format!("partner_id = \"{partner}\""),
        ..EventFilter::default()
    };
    // The member's own Watch: its partner is P, so every event matches.
    let mut member = server.caller_for(&tenants[0].tenant).await;
    let mut stream = watch(&mut member, filter.clone(), Some(0), &BTreeMap::new())
        .await
        .expect("watch");
    let seqs: Vec<u64> = [next(&mut stream).await, next(&mut stream).await]
        .into_iter()
        .map(|kind| match kind {
            Kind::Event(e) => e.seq,
            Kind::Heartbeat(beat) => panic!("a heartbeat before the events: {beat:?}"),
        })
        .collect();
    assert_eq!(seqs, [1, 2]);
    // The other tenant's: no partner, nothing matches; its heartbeat
    // passes its events.
    let mut outsider = server.caller_for(&tenants[1].tenant).await;
    let mut stream = watch(&mut outsider, filter.clone(), Some(0), &BTreeMap::new())
        .await
        .expect("watch");
    match next(&mut stream).await {
        Kind::Heartbeat(beat) => assert_eq!(beat.head_seq, 2),
        Kind::Event(e) => panic!("matched {e:?}"),
    }
    // A legal hold keeps matching for as long as it stands: refused.
    let admin = server.admin_for(&tenants[0].tenant).await;
    let request = admin.request(audit_service::proto::CreateLegalHoldRequest {
        filter: Some(filter),
        reason: "litigation".into(),
    });
    let status = status_of(admin.policy().create_legal_hold(request).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter.expression"),
    );
}
