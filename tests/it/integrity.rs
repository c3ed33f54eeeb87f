//! Tamper evidence: checkpoints, inclusion and consistency proofs checked by
//! an independent RFC 9162 verifier written here (not the service's code),
//! and tampering done directly in SQL caught both by `audit-service verify`
//! and by an auditor checking proofs through the API.

use audit_service::config::DatabaseConfig;
use audit_service::proto::integrity_service_client::IntegrityServiceClient;
use audit_service::proto::{
    self, AuditEvent, Checkpoint, DeleteRequest, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, QueryRequest, get_inclusion_proof_request::Target,
};
use audit_service::store::Store;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Verifier as _;
use prost::Message as _;
use prost_types::value as proto_value;
use sea_orm::ConnectionTrait;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

use crate::on_both_backends;
use crate::support::{Backend, Caller, Credential, TestServer, assert_status, claims, event, hs256_token};

on_both_backends!(
    checkpoint_is_signed_over_the_root_of_every_event,
    inclusion_proofs_verify_by_seq_and_by_id_against_every_tree_size,
    consistency_proofs_link_every_earlier_checkpoint_to_the_latest,
    deleted_event_keeps_its_leaf_and_every_proof_still_verifies,
    checkpoint_of_an_unchanged_log_is_the_stored_one,
    bad_proof_requests_are_invalid_argument,
    integrity_needs_a_credential_with_read_scope,
    events_appended_with_the_tree_off_join_it_at_the_next_checkpoint,
    verify_passes_on_an_intact_log_with_a_deletion,
    edited_row_is_detected_by_verify_and_by_proofs,
    swapped_rows_are_detected_by_verify_and_by_proofs,
    removed_row_is_detected_by_verify_and_by_proofs,
    truncated_log_is_detected_by_verify_and_by_proofs,
    row_whose_id_was_rewritten_is_tampered_not_unreadable,
    truncation_that_rewrites_the_tree_is_caught_by_a_saved_checkpoint,
    concurrent_appends_with_shared_keys_and_deletes_keep_log_and_tree_exact,
    metadata_numbers_are_read_back_bit_for_bit_and_verify,
);

pub(crate) type Hash = [u8; 32];

// ---- an independent RFC 9162 verifier -------------------------------------

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn interior(left: &[u8], right: &[u8]) -> Hash {
    sha256(&[&[1], left, right])
}

/// The leaf of an event as the API returns it: `SHA-256(0x00 || encode())`.
pub(crate) fn leaf_of(event: &AuditEvent) -> Hash {
    sha256(&[&[0], &event.encode_to_vec()])
}

/// MTH by the recursive definition of RFC 9162 2.1.1.
fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            interior(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// RFC 9162 2.1.3.2: the root an inclusion proof leads to, if well formed.
pub(crate) fn root_from_inclusion(index: u64, size: u64, leaf: Hash, proof: &[Vec<u8>]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = interior(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = interior(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// RFC 9162 2.1.4.2.
pub(crate) fn consistency_holds(
    first: u64,
    second: u64,
    first_root: &[u8],
    second_root: &[u8],
    proof: &[Vec<u8>],
) -> bool {
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 || first > second || proof.is_empty() {
        return false;
    }
    let mut path: Vec<Vec<u8>> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, first_root.to_vec());
    }
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut fr: Hash = match path[0].as_slice().try_into() {
        Ok(h) => h,
        Err(_) => return false,
    };
    let mut sr = fr;
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = interior(c, &fr);
            sr = interior(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = interior(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == first_root && sr == second_root
}

/// Checks a checkpoint's signed note with a pinned verifier key
/// (`name+hash+base64(0x01 || key)`) and returns (size, root) as signed.
pub(crate) fn open_checkpoint(note: &str, verifier_key: &str) -> Result<(u64, Hash), String> {
    let mut parts = verifier_key.splitn(3, '+');
    let (name, hash, key) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let key = BASE64.decode(key).map_err(|e| e.to_string())?;
    assert_eq!(key[0], 1, "Ed25519");
    let public = ed25519_dalek::VerifyingKey::from_bytes(&key[1..].try_into().unwrap()).unwrap();
    let split = note.rfind("\n\n").ok_or("no blank line")?;
    let body = &note[..=split];
    let signature_line = note[split + 2..].lines().next().ok_or("no signature")?;
    let rest = signature_line.strip_prefix("\u{2014} ").ok_or("no em dash")?;
    let (signer, blob) = rest.split_once(' ').ok_or("no signature")?;
    let blob = BASE64.decode(blob).map_err(|e| e.to_string())?;
    if signer != name || format!("{:02x}{:02x}{:02x}{:02x}", blob[0], blob[1], blob[2], blob[3]) != hash {
        return Err("signed by another key".into());
    }
    let signature = ed25519_dalek::Signature::from_slice(&blob[4..]).map_err(|e| e.to_string())?;
    public
        .verify(body.as_bytes(), &signature)
        .map_err(|_| "bad signature".to_string())?;
    let mut lines = body.lines();
    let _origin = lines.next();
    let size = lines.next().unwrap().parse().map_err(|_| "size")?;
    let root = BASE64.decode(lines.next().unwrap()).map_err(|e| e.to_string())?;
    Ok((size, root.try_into().map_err(|_| "root size")?))
}

#[test]
fn the_independent_verifier_accepts_the_ct_reference_vectors() {
    // github.com/transparency-dev/merkle proof/verify_test.go (leaves,
    // roots, inclusionProofs {6, 8}, consistencyProofs {6, 8}).
    let data: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
        ],
    ];
    let leaves: Vec<Hash> = data.iter().map(|d| sha256(&[&[0], d])).collect();
    let hex = |h: &[u8]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let unhex = |s: &str| {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    assert_eq!(
        hex(&root_of(&leaves)),
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    );
    let inclusion: Vec<Vec<u8>> = [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    .iter()
    .map(|h| unhex(h))
    .collect();
    assert_eq!(
        root_from_inclusion(5, 8, leaves[5], &inclusion),
        Some(root_of(&leaves))
    );
    assert_ne!(
        root_from_inclusion(4, 8, leaves[5], &inclusion),
        Some(root_of(&leaves))
    );
    let consistency: Vec<Vec<u8>> = [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    .iter()
    .map(|h| unhex(h))
    .collect();
    assert!(consistency_holds(
        6,
        8,
        &root_of(&leaves[..6]),
        &root_of(&leaves),
        &consistency
    ));
    assert!(!consistency_holds(
        5,
        8,
        &root_of(&leaves[..5]),
        &root_of(&leaves),
        &consistency
    ));
}

// ---- helpers ----------------------------------------------------------------

struct Auditor {
    caller: Caller,
    integrity: IntegrityServiceClient<Channel>,
}

impl Auditor {
    async fn new(server: &TestServer) -> Self {
        Self {
            caller: server.caller().await,
            integrity: IntegrityServiceClient::new(server.channel().await),
        }
    }

    fn tenant(&self) -> &str {
        &self.caller.tenant
    }

    async fn append(&mut self, count: usize) {
        let events = (0..count)
            .map(|i| event("user.login", &format!("user-{i}")))
            .collect();
        self.caller.append(events).await;
    }

    async fn checkpoint(&mut self) -> Checkpoint {
        let request = self.caller.request(GetCheckpointRequest {});
        self.integrity
            .get_checkpoint(request)
            .await
            .expect("checkpoint")
            .into_inner()
    }

    async fn inclusion(
        &mut self,
        target: Target,
        tree_size: u64,
    ) -> Result<proto::InclusionProof, tonic::Status> {
        let request = self.caller.request(GetInclusionProofRequest {
            target: Some(target),
            tree_size,
        });
        self.integrity
            .get_inclusion_proof(request)
            .await
            .map(|r| r.into_inner())
    }

    async fn consistency(
        &mut self,
        first: u64,
        second: u64,
    ) -> Result<proto::ConsistencyProof, tonic::Status> {
        let request = self.caller.request(GetConsistencyProofRequest {
            first_tree_size: first,
            second_tree_size: second,
        });
        self.integrity
            .get_consistency_proof(request)
            .await
            .map(|r| r.into_inner())
    }

    /// Every live event, oldest first.
    async fn events(&mut self) -> Vec<AuditEvent> {
        let request = QueryRequest {
            order_by: "seq asc".into(),
            page_size: 1000,
            ..Default::default()
        };
        self.caller.query(request).await.events
    }

    /// What an auditor holding a signed checkpoint does: every event the API
    /// returns must be at its seq in the signed tree (leaf recomputed from
    /// the event itself), and the seqs must run 1..=size with none missing
    /// except those the log itself records as deleted.
    async fn audit(&mut self, note: &str, verifier_key: &str) -> Result<(), String> {
        let (size, root) = open_checkpoint(note, verifier_key)?;
        let events = self.events().await;
        let mut deleted_seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.action == "audit.event.deleted")
            .filter_map(|e| e.metadata.as_ref()?.fields.get("deleted_seq"))
            .filter_map(|v| match v.kind {
                // JSON numbers arrive as f64; a whole, non-negative one
                // prints as its digits.
                Some(prost_types::value::Kind::NumberValue(n)) => n.to_string().parse().ok(),
                _ => None,
            })
            .collect();
        let mut present: Vec<u64> = events.iter().map(|e| e.seq).filter(|s| *s <= size).collect();
        present.append(&mut deleted_seqs);
        present.sort_unstable();
        if present != (1..=size).collect::<Vec<_>>() {
            return Err(format!("seqs 1..={size} expected, the log has {present:?}"));
        }
        for event in events.iter().filter(|e| e.seq <= size) {
            let proof = self
                .inclusion(Target::Seq(event.seq), size)
                .await
                .map_err(|s| s.message().to_owned())?;
            let computed = root_from_inclusion(event.seq - 1, size, leaf_of(event), &proof.hashes);
            if computed != Some(root) {
                return Err(format!("event at seq {} is not in the signed tree", event.seq));
            }
        }
        Ok(())
    }

    async fn sql(&self, server: &TestServer, statements: &[String]) {
        let store = Store::connect(&DatabaseConfig::new(server.database_url.clone()))
            .await
            .expect("store");
        for statement in statements {
            store
                .connection()
                .execute_unprepared(statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        store.close().await.expect("close");
    }
}

/// Runs `audit-service verify` on the server's database: (exit code, stdout).
pub(crate) fn run_verify(server: &TestServer, tenant: &str, extra: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .arg("verify")
        .args(["--tenant", tenant])
        .args(extra)
        .env("DATABASE_URL", &server.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service verify");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

#[track_caller]
fn assert_tampered_at(result: (i32, String), seq: u64) {
    let (code, output) = result;
    assert_eq!(code, 2, "verify should report tampering:\n{output}");
    assert!(
        output.contains(&format!("TAMPERED: first bad seq {seq}\n")),
        "{output}"
    );
}

// ---- behaviour --------------------------------------------------------------

async fn checkpoint_is_signed_over_the_root_of_every_event(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    let empty = auditor.checkpoint().await;
    assert_eq!(empty.tree_size, 0);
    assert_eq!(empty.root_hash, sha256(&[]).to_vec());
    for batch in [1, 5, 7] {
        auditor.append(batch).await;
    }
    let checkpoint = auditor.checkpoint().await;
    assert_eq!(checkpoint.tree_size, 13);
    assert_eq!(checkpoint.origin, format!("audit-service/{}", auditor.tenant()));
    let (size, root) = open_checkpoint(&checkpoint.note, &empty.verifier_key).expect("signature");
    assert_eq!(size, 13);
    assert_eq!(root.to_vec(), checkpoint.root_hash);
    let leaves: Vec<Hash> = auditor.events().await.iter().map(leaf_of).collect();
    assert_eq!(
        root,
        root_of(&leaves),
        "root of the events as the API returns them"
    );
    assert!(
        checkpoint
            .note
            .starts_with(&format!("{}\n13\n{}\n", checkpoint.origin, BASE64.encode(root)))
    );
    assert_eq!(checkpoint.signature.len(), 64);
}

async fn inclusion_proofs_verify_by_seq_and_by_id_against_every_tree_size(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    auditor.append(3).await;
    auditor.append(8).await;
    let events = auditor.events().await;
    let leaves: Vec<Hash> = events.iter().map(leaf_of).collect();
    for len in 1..=events.len() {
        let size = u64::try_from(len).expect("a few events");
        let root = root_of(&leaves[..len]);
        for event in events.iter().filter(|e| e.seq <= size) {
            for target in [Target::Seq(event.seq), Target::EventId(event.id.clone())] {
                let proof = auditor.inclusion(target, size).await.expect("proof");
                assert_eq!(proof.leaf_hash, leaf_of(event).to_vec());
                assert_eq!(proof.root_hash, root.to_vec());
                assert_eq!(
                    root_from_inclusion(event.seq - 1, size, leaf_of(event), &proof.hashes),
                    Some(root),
                    "seq {} in tree of {size}",
                    event.seq
                );
            }
        }
    }
    // 0 means the current tree.
    let proof = auditor.inclusion(Target::Seq(4), 0).await.expect("proof");
    assert_eq!(proof.tree_size, 11);
}

async fn consistency_proofs_link_every_earlier_checkpoint_to_the_latest(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    let mut checkpoints = Vec::new();
    for batch in [1, 3, 4, 5, 1, 2] {
        auditor.append(batch).await;
        checkpoints.push(auditor.checkpoint().await);
    }
    for (i, old) in checkpoints.iter().enumerate() {
        for new in &checkpoints[i..] {
            let proof = auditor
                .consistency(old.tree_size, new.tree_size)
                .await
                .expect("proof");
            assert_eq!(proof.first_root_hash, old.root_hash);
            assert_eq!(proof.second_root_hash, new.root_hash);
            assert!(
                consistency_holds(
                    old.tree_size,
                    new.tree_size,
                    &old.root_hash,
                    &new.root_hash,
                    &proof.hashes
                ),
                "{} -> {}",
                old.tree_size,
                new.tree_size
            );
        }
    }
}

async fn deleted_event_keeps_its_leaf_and_every_proof_still_verifies(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    auditor.append(6).await;
    let before = auditor.checkpoint().await;
    let victim = auditor.events().await.remove(2);
    let request = auditor.caller.request(DeleteRequest {
        id: victim.id.clone(),
        reason: "retention".into(),
    });
    auditor.caller.client.delete(request).await.expect("delete");
    let after = auditor.checkpoint().await;
    assert_eq!(after.tree_size, 7, "the deletion is a leaf of its own");

    let proof = auditor.consistency(6, 7).await.expect("consistency");
    assert!(consistency_holds(
        6,
        7,
        &before.root_hash,
        &after.root_hash,
        &proof.hashes
    ));
    let by_seq = auditor
        .inclusion(Target::Seq(3), 7)
        .await
        .expect("erased event by seq");
    assert_eq!(
        by_seq.leaf_hash,
        leaf_of(&victim).to_vec(),
        "the erased event keeps its leaf"
    );
    let root: Hash = after.root_hash.clone().try_into().unwrap();
    assert_eq!(
        root_from_inclusion(2, 7, leaf_of(&victim), &by_seq.hashes),
        Some(root)
    );
    let by_id = auditor.inclusion(Target::EventId(victim.id.clone()), 0).await;
    assert_eq!(by_id.expect_err("erased event by id").code(), Code::NotFound);
    auditor
        .audit(&after.note, &before.verifier_key)
        .await
        .expect("audit passes");
}

async fn checkpoint_of_an_unchanged_log_is_the_stored_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    auditor.append(4).await;
    let first = auditor.checkpoint().await;
    let again = auditor.checkpoint().await;
    assert_eq!(first, again, "same size, same signed note");
    // A second replica on the same database signs with the same key.
    let other = TestServer::start_on(server.backend.clone(), server.database_url.clone(), |_| {}).await;
    let mut integrity = IntegrityServiceClient::new(other.channel().await);
    let from_other = integrity
        .get_checkpoint(auditor.caller.request(GetCheckpointRequest {}))
        .await
        .expect("checkpoint")
        .into_inner();
    assert_eq!(from_other, first);
}

async fn bad_proof_requests_are_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    auditor.append(5).await;
    let cases: Vec<(Option<Target>, u64, &str)> = vec![
        (Some(Target::Seq(1)), 6, "tree_size"),
        (Some(Target::Seq(0)), 0, "seq"),
        (Some(Target::Seq(5)), 4, "tree_size"),
        (Some(Target::Seq(6)), 0, "tree_size"),
        (Some(Target::EventId("not-a-uuid".into())), 0, "event_id"),
        (None, 0, "target"),
    ];
    for (target, tree_size, field) in cases {
        let request = auditor
            .caller
            .request(GetInclusionProofRequest { target, tree_size });
        let status = auditor
            .integrity
            .get_inclusion_proof(request)
            .await
            .expect_err(field);
        assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT", Some(field));
    }
    for (first, second, field) in [
        (0, 5, "first_tree_size"),
        (5, 3, "first_tree_size"),
        (1, 9, "second_tree_size"),
    ] {
        let status = auditor.consistency(first, second).await.expect_err(field);
        assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT", Some(field));
    }
    let unknown = auditor
        .inclusion(Target::EventId(uuid::Uuid::now_v7().to_string()), 0)
        .await;
    assert_eq!(unknown.expect_err("unknown id").code(), Code::NotFound);
}

async fn integrity_needs_a_credential_with_read_scope(backend: Backend) {
    let server = TestServer::start(backend).await;
    let auditor = Auditor::new(&server).await;
    let mut integrity = IntegrityServiceClient::new(server.channel().await);
    let tenant = auditor.tenant().to_owned();
    let append_only = Credential::Bearer(hs256_token(&claims("svc", &tenant, "audit:append")));
    let caller = server.caller_with(&tenant, append_only).await;
    let status = integrity
        .get_checkpoint(caller.request(GetCheckpointRequest {}))
        .await
        .expect_err("no read scope");
    assert_status(&status, Code::PermissionDenied, "MISSING_SCOPE", None);
    let anonymous = server.caller_with(&tenant, Credential::None).await;
    let status = integrity
        .get_checkpoint(anonymous.request(GetCheckpointRequest {}))
        .await
        .expect_err("no credential");
    assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);
}

async fn events_appended_with_the_tree_off_join_it_at_the_next_checkpoint(backend: Backend) {
    use audit_service::config::TreeMaintenance;
    let server = TestServer::start_with(backend, |c| c.tree_maintenance = TreeMaintenance::Off).await;
    let mut auditor = Auditor::new(&server).await;
    auditor.append(9).await;
    let checkpoint = auditor.checkpoint().await;
    assert_eq!(checkpoint.tree_size, 9);
    let leaves: Vec<Hash> = auditor.events().await.iter().map(leaf_of).collect();
    assert_eq!(checkpoint.root_hash, root_of(&leaves).to_vec());
    let (code, output) = run_verify(&server, auditor.tenant(), &[]);
    assert_eq!(code, 0, "{output}");
}

async fn verify_passes_on_an_intact_log_with_a_deletion(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    auditor.append(5).await;
    let saved = auditor.checkpoint().await;
    let victim = auditor.events().await.remove(1);
    let request = auditor.caller.request(DeleteRequest {
        id: victim.id,
        reason: "retention".into(),
    });
    auditor.caller.client.delete(request).await.expect("delete");
    auditor.append(3).await;
    auditor.checkpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let saved_path = dir.path().join("checkpoint.txt");
    std::fs::write(&saved_path, &saved.note).unwrap();
    let (code, output) = run_verify(
        &server,
        auditor.tenant(),
        &[
            "--checkpoint",
            saved_path.to_str().unwrap(),
            "--verifier-key",
            &saved.verifier_key,
        ],
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("OK: the log is intact"), "{output}");
    assert!(
        output.contains("checkpoint of 5 events: root matches"),
        "{output}"
    );
    assert!(
        output.contains("checkpoint of 9 events: root matches"),
        "{output}"
    );
}

/// Numbers in metadata are stored as JSON text (SQLite) or jsonb
/// (PostgreSQL) and parsed back: a parser that is off by one bit returns
/// another value than was appended, and the event no longer hashes to its
/// leaf.
async fn metadata_numbers_are_read_back_bit_for_bit_and_verify(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    let numbers: [f64; 4] = [
        0.098_009_800_000_000_01,
        1.071_566_039_146_582_6e-75,
        0.1,
        -2.5e300,
    ];
    let mut input = event("metrics.sampled", "probe");
    input.metadata = Some(audit_service::convert::json_to_struct(
        serde_json::json!({ "values": numbers }),
    ));
    auditor.caller.append(vec![input]).await;
    let stored = auditor.events().await.remove(0);
    let values = stored.metadata.expect("metadata").fields["values"].clone();
    let read: Vec<u64> = match values.kind {
        Some(proto_value::Kind::ListValue(list)) => list
            .values
            .iter()
            .map(|v| match v.kind {
                Some(proto_value::Kind::NumberValue(n)) => n.to_bits(),
                _ => panic!("a number: {v:?}"),
            })
            .collect(),
        other => panic!("a list: {other:?}"),
    };
    let appended: Vec<u64> = numbers.iter().map(|n| n.to_bits()).collect();
    assert_eq!(read, appended, "read back bit for bit");
    let (code, output) = run_verify(&server, auditor.tenant(), &[]);
    assert_eq!(code, 0, "{output}");
}

/// Sixteen appenders (whose groups overlap on PostgreSQL) racing on shared
/// idempotency keys while events are deleted: every key is recorded once,
/// the seqs run gapless, and the tree matches the log.
async fn concurrent_appends_with_shared_keys_and_deletes_keep_log_and_tree_exact(backend: Backend) {
    use std::collections::HashMap;

    let server = TestServer::start(backend).await;
    let mut auditor = Auditor::new(&server).await;
    auditor.append(3).await;
    let tenant = auditor.tenant().to_owned();
    let mut appenders = Vec::new();
    for worker in 0..16usize {
        let mut caller = server.caller_for(&tenant).await;
        appenders.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for round in 0..12usize {
                let size = 1 + (worker + round) % 6;
                let batch: Vec<_> = (0..size)
                    .map(|i| {
                        let mut e = event("document.read", &format!("w{worker}-r{round}-{i}"));
                        if i == 0 {
                            // Every worker sends the same key in the same round.
                            e.idempotency_key = format!("shared-{round}");
                        }
                        e
                    })
                    .collect();
                let appended = caller.append(batch).await;
                assert_eq!(appended.len(), size);
                results.extend(appended.into_iter().enumerate().map(|(i, r)| (round, i, r)));
            }
            results
        }));
    }
    let mut deleter = server.caller_for(&tenant).await;
    let mut deletion_seqs = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let victim = deleter
            .query(QueryRequest {
                order_by: "seq asc".into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .events
            .remove(0);
        let request = deleter.request(DeleteRequest {
            id: victim.id,
            reason: "retention".into(),
        });
        let deleted = deleter.client.delete(request).await.expect("delete").into_inner();
        deletion_seqs.push(deleted.deletion_event.expect("deletion event").seq);
    }

    let mut by_key: HashMap<usize, (String, u64)> = HashMap::new();
    let mut seqs = deletion_seqs;
    let mut ids = std::collections::HashSet::new();
    for appender in appenders {
        for (round, i, result) in appender.await.expect("appender") {
            if i == 0 {
                let first = by_key.entry(round).or_insert((result.id.clone(), result.seq));
                assert_eq!(
                    (&first.0, first.1),
                    (&result.id, result.seq),
                    "key shared-{round}"
                );
            }
            if !result.duplicate {
                assert!(ids.insert(result.id.clone()), "id {} handed out twice", result.id);
                seqs.push(result.seq);
            }
        }
    }
    // Each shared key was recorded once, not once per worker.
    assert_eq!(ids.len(), seqs.len() - 4);
    seqs.extend(1..=3);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let checkpoint = auditor.checkpoint().await;
    assert_eq!(checkpoint.tree_size, seqs.len() as u64);
    auditor
        .audit(&checkpoint.note, &checkpoint.verifier_key)
        .await
        .expect("every event is in the signed tree");
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_eq!(code, 0, "{output}");
}

/// A tenant with ten events and a checkpoint of them, verified intact.
async fn signed_log(server: &TestServer) -> (Auditor, Checkpoint) {
    let mut auditor = Auditor::new(server).await;
    auditor.append(4).await;
    auditor.append(6).await;
    let checkpoint = auditor.checkpoint().await;
    auditor
        .audit(&checkpoint.note, &checkpoint.verifier_key)
        .await
        .expect("intact");
    let (code, output) = run_verify(server, auditor.tenant(), &[]);
    assert_eq!(code, 0, "{output}");
    (auditor, checkpoint)
}

/// Tampers with a signed ten-event log through `sql` (given the tenant),
/// then asserts that `verify` names `first_bad` as the first bad seq and
/// that an auditor's proof check fails saying `audit_says`. Returns what
/// `verify` printed.
async fn tamper(
    backend: Backend,
    sql: impl Fn(&str) -> Vec<String>,
    first_bad: u64,
    audit_says: &str,
) -> String {
    let server = TestServer::start(backend).await;
    let (mut auditor, checkpoint) = signed_log(&server).await;
    let tenant = auditor.tenant().to_owned();
    auditor.sql(&server, &sql(&tenant)).await;
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_tampered_at((code, output.clone()), first_bad);
    let error = auditor
        .audit(&checkpoint.note, &checkpoint.verifier_key)
        .await
        .expect_err("the auditor catches it");
    assert!(error.contains(audit_says), "{error}");
    output
}

async fn edited_row_is_detected_by_verify_and_by_proofs(backend: Backend) {
    let edit = |t: &str| {
        vec![format!(
            "UPDATE audit_events SET actor_id = 'mallory' WHERE tenant_id = '{t}' AND seq = 5"
        )]
    };
    let output = tamper(backend, edit, 5, "seq 5").await;
    assert!(output.contains("content does not match"), "{output}");
}

async fn swapped_rows_are_detected_by_verify_and_by_proofs(backend: Backend) {
    let swap = |t: &str| {
        let at = |seq: i64, to: i64| {
            format!("UPDATE audit_events SET seq = {to} WHERE tenant_id = '{t}' AND seq = {seq}")
        };
        vec![at(3, -3), at(8, 3), at(-3, 8)]
    };
    let output = tamper(backend, swap, 3, "seq 3").await;
    assert!(output.contains("seq 8: content does not match"), "{output}");
}

async fn removed_row_is_detected_by_verify_and_by_proofs(backend: Backend) {
    let remove = |t: &str| {
        vec![format!(
            "DELETE FROM audit_events WHERE tenant_id = '{t}' AND seq = 4"
        )]
    };
    let output = tamper(backend, remove, 4, "expected").await;
    assert!(output.contains("seq 4: event missing"), "{output}");
}

async fn truncated_log_is_detected_by_verify_and_by_proofs(backend: Backend) {
    let truncate = |t: &str| {
        vec![format!(
            "DELETE FROM audit_events WHERE tenant_id = '{t}' AND seq > 7"
        )]
    };
    let output = tamper(backend, truncate, 8, "expected").await;
    assert!(output.contains("log truncated"), "{output}");
}

async fn row_whose_id_was_rewritten_is_tampered_not_unreadable(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (auditor, _) = signed_log(&server).await;
    let tenant = auditor.tenant().to_owned();
    // On SQLite the id column then holds text where the service writes a
    // 16-byte blob; on PostgreSQL the literal is cast to another uuid.
    let rewrite = format!(
        "UPDATE audit_events SET id = '{}' WHERE tenant_id = '{tenant}' AND seq = 6",
        uuid::Uuid::now_v7()
    );
    auditor.sql(&server, &[rewrite]).await;
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_tampered_at((code, output.clone()), 6);
    assert!(output.contains("events read"), "every row was read: {output}");
}

async fn truncation_that_rewrites_the_tree_is_caught_by_a_saved_checkpoint(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut auditor, saved) = signed_log(&server).await;
    let tenant = auditor.tenant().to_owned();
    // A thorough attacker: drops the tail, the tree, the checkpoints, and
    // winds the head back, so the service re-signs a smaller log.
    auditor
        .sql(
            &server,
            &[
                format!("DELETE FROM audit_events WHERE tenant_id = '{tenant}' AND seq > 7"),
                format!("DELETE FROM merkle_nodes WHERE tenant_id = '{tenant}'"),
                format!("DELETE FROM merkle_checkpoints WHERE tenant_id = '{tenant}'"),
                format!("UPDATE tenant_heads SET head_seq = 7, tree_size = 0 WHERE tenant_id = '{tenant}'"),
            ],
        )
        .await;
    let resigned = auditor.checkpoint().await;
    assert_eq!(resigned.tree_size, 7);
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_eq!(
        code, 0,
        "without outside evidence the rewritten log looks whole:\n{output}"
    );

    // The checkpoint the auditor saved outside the service exposes it.
    let status = auditor
        .consistency(resigned.tree_size, saved.tree_size)
        .await
        .expect_err("a log never shrinks");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("second_tree_size"),
    );
    let error = auditor
        .audit(&saved.note, &saved.verifier_key)
        .await
        .expect_err("caught");
    assert!(error.contains("expected"), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let saved_path = dir.path().join("checkpoint.txt");
    std::fs::write(&saved_path, &saved.note).unwrap();
    let (code, output) = run_verify(&server, &tenant, &["--checkpoint", saved_path.to_str().unwrap()]);
    assert_tampered_at((code, output.clone()), 8);
    assert!(
        output.contains("log truncated: 10 events were recorded"),
        "{output}"
    );
}
