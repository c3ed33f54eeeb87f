//! Reads after the server's database connections died (as after a
//! PostgreSQL restart) answer at once, on fresh connections (PostgreSQL
//! only: the test ends the server's own sessions, never the cluster).

use audit_service::proto::{EventFilter, GetRequest, QueryRequest, StatsRequest};

use crate::backends::{Admin, named_sessions};
use crate::support::{Backend, Caller, Credential, TestServer, event, new_tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_succeed_right_after_the_servers_connections_are_terminated() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let (server_url, sessions) = named_sessions(&url);
    let server = TestServer::start_on(Backend::Postgres(server_url.clone()), server_url, |_| {}).await;
    let admin = Admin::connect(&url).await;
    let tenant = new_tenant();
    let (_, key) = server.mint_api_key(&tenant, &["audit:read"]).await;
    let mut writer = server.caller_for(&tenant).await;
    let mut reader = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    let appended = writer
        .append((0..3).map(|i| event("invoice.paid", &format!("u{i}"))).collect())
        .await;
    let id = appended[0].id.clone();
    // Every read path has served once, so each pool holds connections.
    query(&mut reader).await.expect("query before");
    get(&mut reader, &id).await.expect("get before");
    stats(&mut reader).await.expect("stats before");

    assert!(admin.terminate(&sessions).await > 0, "the server has no sessions");
    let page = query(&mut reader)
        .await
        .expect("Query after the connections died");
    assert_eq!(page.len(), 3);

    assert!(admin.terminate(&sessions).await > 0);
    let found = get(&mut reader, &id)
        .await
        .expect("Get after the connections died");
    assert_eq!(found, id);

    assert!(admin.terminate(&sessions).await > 0);
    let total = stats(&mut reader)
        .await
        .expect("Stats after the connections died");
    assert_eq!(total, 3);
}

async fn query(caller: &mut Caller) -> Result<Vec<String>, tonic::Status> {
    let request = caller.request(QueryRequest {
        filter: Some(EventFilter::default()),
        page_size: 100,
        page_token: String::new(),
        order_by: "seq asc".into(),
    });
    let response = caller.client.query(request).await?.into_inner();
    Ok(response.events.into_iter().map(|e| e.id).collect())
}

async fn get(caller: &mut Caller, id: &str) -> Result<String, tonic::Status> {
    let request = caller.request(GetRequest { id: id.to_owned() });
    Ok(caller.client.get(request).await?.into_inner().id)
}

async fn stats(caller: &mut Caller) -> Result<u64, tonic::Status> {
    let request = caller.request(StatsRequest {
        filter: Some(EventFilter::default()),
        ..Default::default()
    });
    Ok(caller.client.stats(request).await?.into_inner().total)
}
