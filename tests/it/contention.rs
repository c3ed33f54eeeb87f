//! Two replicas on one PostgreSQL database appending to one tenant at once
//! (PostgreSQL only): every append answers, every acknowledged event is
//! stored at its seq, and the log verifies.

use std::collections::HashMap;
use std::time::Duration;

use audit_service::proto::{AppendRequest, EventFilter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{Backend, ServerProcess, event, new_tenant};

/// Tenants contended for, one after the other, on the same two replicas.
const ROUNDS: usize = 4;
/// Concurrent appenders on each replica, all on the round's tenant.
const APPENDERS_PER_REPLICA: usize = 4;
/// Appends each appender makes in a round.
const BATCHES_PER_APPENDER: usize = 40;
/// Largest batch; each batch has 1 to this many events.
const MAX_BATCH: usize = 30;
/// The deadline of each append: a call stuck behind a deadlock fails the
/// test instead of hanging it.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// What one acknowledged event was told.
struct Acked {
    id: String,
    seq: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_appending_random_batches_to_one_tenant_never_deadlock() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let seed: u64 = rand::random();
    eprintln!("contention seed: {seed}");
    let mut seeds = StdRng::seed_from_u64(seed);
    let replicas = [ServerProcess::start(&url, &[]), ServerProcess::start(&url, &[])];
    let mut tenants = Vec::new();
    for round in 0..ROUNDS {
        let tenant = new_tenant();
        let mut appenders = Vec::new();
        for (r, replica) in replicas.iter().enumerate() {
            for a in 0..APPENDERS_PER_REPLICA {
                let mut caller = replica.caller_for(&tenant).await;
                let mut rng = StdRng::seed_from_u64(seeds.random());
                appenders.push(tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for b in 0..BATCHES_PER_APPENDER {
                        let size = rng.random_range(1..=MAX_BATCH);
                        let events = (0..size)
                            .map(|i| event("document.update", &format!("r{round}-{r}-{a}-{b}-{i}")))
                            .collect();
                        let mut request = caller.request(AppendRequest { events });
                        request.set_timeout(CALL_DEADLINE);
                        let answer = tokio::time::timeout(CALL_DEADLINE * 2, caller.client.append(request))
                            .await
                            .unwrap_or_else(|_| {
                                panic!("round {round}: append on replica {r} never answered")
                            });
                        let results = answer
                            .unwrap_or_else(|status| {
                                panic!("round {round}: append on replica {r} failed: {status:?}")
                            })
                            .into_inner()
                            .results;
                        assert_eq!(results.len(), size);
                        for pair in results.windows(2) {
                            assert_eq!(pair[1].seq, pair[0].seq + 1, "batch split across seqs");
                        }
                        acked.extend(results.into_iter().map(|r| Acked { id: r.id, seq: r.seq }));
                    }
                    acked
                }));
            }
        }
        let mut acked = Vec::new();
        for appender in appenders {
            acked.extend(appender.await.expect("appender"));
        }

        let mut seqs: Vec<u64> = acked.iter().map(|a| a.seq).collect();
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=acked.len() as u64).collect();
        assert_eq!(seqs, expected, "round {round}: seqs acknowledged");
        let mut reader = replicas[round % 2].caller_for(&tenant).await;
        let stored = reader.query_all(EventFilter::default(), "seq asc", 1000).await;
        let stored_at: HashMap<u64, &str> = stored.iter().map(|e| (e.seq, e.id.as_str())).collect();
        assert_eq!(stored.len(), acked.len(), "round {round}: events stored");
        for a in &acked {
            assert_eq!(
                stored_at.get(&a.seq).copied(),
                Some(a.id.as_str()),
                "round {round}: acknowledged event not stored at its seq {}",
                a.seq
            );
        }
        let (code, output) = verify(&url, &tenant);
        assert_eq!(code, 0, "round {round}: verify failed:\n{output}");
        tenants.push(tenant);
    }

    // No tenant was left wedged: each still takes appends on both replicas.
    for tenant in &tenants {
        for replica in &replicas {
            let mut caller = replica.caller_for(tenant).await;
            let mut request = caller.request(AppendRequest {
                events: vec![event("document.read", "after")],
            });
            request.set_timeout(CALL_DEADLINE);
            tokio::time::timeout(CALL_DEADLINE * 2, caller.client.append(request))
                .await
                .expect("append after the rounds never answered")
                .expect("append after the rounds");
        }
    }
}

/// Single events appended to one tenant by two replicas taking turns, then
/// by both at once: each replica's cached tree frontier goes stale at every
/// turn (the other replica moved the head), so an append that trusted a
/// stale frontier would store a wrong tree, and verify would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_appending_single_events_in_turn_keep_the_tree() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let replicas = [ServerProcess::start(&url, &[]), ServerProcess::start(&url, &[])];
    let tenant = new_tenant();
    let mut callers = [
        replicas[0].caller_for(&tenant).await,
        replicas[1].caller_for(&tenant).await,
    ];
    let mut seqs = Vec::new();
    for turn in 0..24 {
        // Two in a row on one replica every third turn: its frontier is
        // then current, and is used.
        let r = usize::from(turn % 3 != 0);
        let appended = callers[r]
            .append(vec![event("document.read", &format!("turn-{turn}"))])
            .await;
        seqs.push(appended[0].seq);
    }
    let mut appenders = Vec::new();
    for (r, mut caller) in callers.into_iter().enumerate() {
        appenders.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let appended = caller
                    .append(vec![event("document.read", &format!("r{r}-{i}"))])
                    .await;
                seqs.push(appended[0].seq);
            }
            seqs
        }));
    }
    for appender in appenders {
        seqs.extend(appender.await.expect("appender"));
    }
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs acknowledged");
    let (code, output) = verify(&url, &tenant);
    assert_eq!(code, 0, "verify failed:\n{output}");
}

/// Runs `audit-service verify --tenant` on `url`: exit code and output.
fn verify(url: &str, tenant: &str) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["verify", "--tenant", tenant])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}
