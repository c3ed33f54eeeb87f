//! Two server processes on one PostgreSQL database hand out one tenant's
//! seqs without gaps or duplicates (PostgreSQL only).

use std::collections::HashSet;

use audit_service::proto::{EventFilter, QueryRequest};

use crate::support::{Backend, ServerProcess, event, new_tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_hand_out_contiguous_seqs_to_one_tenant() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let replicas = [ServerProcess::start(&url, &[]), ServerProcess::start(&url, &[])];
    assert_ne!(replicas[0].addr, replicas[1].addr);
    let tenant = new_tenant();

    let mut appenders = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for worker in 0..4 {
            let mut caller = replica.caller_for(&tenant).await;
            appenders.push(tokio::spawn(async move {
                let mut results = Vec::new();
                for round in 0..30 {
                    let size = 1 + (r * 4 + worker * 3 + round * 7) % 10;
                    let batch = (0..size)
                        .map(|i| event("document.read", &format!("r{r}-w{worker}-b{round}-{i}")))
                        .collect();
                    let appended = caller.append(batch).await;
                    assert_eq!(appended.len(), size);
                    for pair in appended.windows(2) {
                        assert_eq!(pair[1].seq, pair[0].seq + 1, "batch split across seqs");
                    }
                    results.extend(appended);
                }
                results
            }));
        }
    }
    let mut seqs = Vec::new();
    let mut ids = HashSet::new();
    for appender in appenders {
        for result in appender.await.expect("appender") {
            assert!(!result.duplicate);
            assert!(ids.insert(result.id), "id handed out twice");
            seqs.push(result.seq);
        }
    }
    let appended = seqs.len() as u64;
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=appended).collect();
    assert_eq!(seqs, expected, "seqs acknowledged to the appenders");

    // Read the log back, alternating replicas page by page: page tokens made
    // by one replica are honoured by the other.
    let mut readers = [
        replicas[0].caller_for(&tenant).await,
        replicas[1].caller_for(&tenant).await,
    ];
    let mut stored = Vec::new();
    let mut page_token = String::new();
    for page in 0.. {
        let response = readers[page % 2]
            .query(QueryRequest {
                filter: Some(EventFilter::default()),
                page_size: 97,
                page_token: page_token.clone(),
                order_by: "seq asc".into(),
            })
            .await;
        stored.extend(response.events);
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    let stored_seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(stored_seqs, expected, "seqs stored");
    assert_eq!(stored.len() as u64, appended);
    assert!(stored.iter().all(|e| ids.contains(&e.id)));
}
