//! Append: contiguous seqs, all-or-nothing batches, idempotency.

use std::collections::HashSet;

use audit_service::proto::EventFilter;

use crate::on_both_backends;
use crate::support::{Backend, TestServer, event};

on_both_backends!(
    seqs_are_contiguous_under_eight_concurrent_appenders,
    idempotency_key_returns_the_original_event
);

async fn seqs_are_contiguous_under_eight_concurrent_appenders(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut appenders = Vec::new();
    for worker in 0..8 {
        let mut caller = server.caller_for(&tenant).await;
        appenders.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for round in 0..20 {
                let size = 1 + (worker + round) % 7;
                let batch = (0..size)
                    .map(|i| event("document.read", &format!("w{worker}-r{round}-{i}")))
                    .collect();
                let appended = caller.append(batch).await;
                assert_eq!(appended.len(), size);
                // A batch occupies consecutive seqs: nothing interleaves.
                for pair in appended.windows(2) {
                    assert_eq!(pair[1].seq, pair[0].seq + 1);
                }
                results.extend(appended);
            }
            results
        }));
    }
    let mut seqs = Vec::new();
    let mut ids = HashSet::new();
    for appender in appenders {
        for result in appender.await.expect("appender") {
            assert!(!result.duplicate);
            seqs.push(result.seq);
            assert!(ids.insert(result.id));
        }
    }
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected);

    let mut caller = server.caller_for(&tenant).await;
    let stored = caller.query_all(EventFilter::default(), "seq asc", 1000).await;
    let stored_seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(stored_seqs, expected);
    assert!(stored.iter().all(|e| ids.contains(&e.id)));
}

async fn idempotency_key_returns_the_original_event(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let keyed = |key: &str| {
        let mut e = event("user.login", "alice");
        e.idempotency_key = key.to_owned();
        e
    };
    let first = caller.append(vec![keyed("k1"), keyed("k2")]).await;
    assert!(first.iter().all(|r| !r.duplicate));

    let again = caller
        .append(vec![
            keyed("k2"),
            event("user.logout", "alice"),
            keyed("k1"),
            keyed("k3"),
            keyed("k3"),
        ])
        .await;
    assert_eq!(
        (again[0].id.as_str(), again[0].seq, again[0].duplicate),
        (first[1].id.as_str(), first[1].seq, true)
    );
    assert_eq!((again[1].seq, again[1].duplicate), (3, false));
    assert_eq!(
        (again[2].id.as_str(), again[2].seq, again[2].duplicate),
        (first[0].id.as_str(), first[0].seq, true)
    );
    assert_eq!((again[3].seq, again[3].duplicate), (4, false));
    assert_eq!(
        (again[4].id.as_str(), again[4].seq, again[4].duplicate),
        (again[3].id.as_str(), 4, true)
    );

    let stored = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
}
