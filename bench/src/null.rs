//! The null ext_authz servers: the physical limit of any ext_authz server
//! (decode the `CheckRequest`, answer allow) and, with `--redis`, the floor
//! of any exact quota shared across replicas (the same plus one `EVALSHA`
//! round trip per check, through the same Redis client and connection
//! manager tollgate uses).
//!
//! Both answer with the `CheckResponse` tollgate gives for the benchmark
//! request (identity headers, credential removals, RateLimit headers,
//! dynamic metadata), so Envoy does the same work behind them as behind
//! tollgate. They run on the same multi-threaded tokio runtime as
//! `tollgate serve` and print `listening <addr>` once bound.

use tollgate::grpc::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use tollgate::grpc::pb::{CheckRequest, CheckResponse};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The one script of the null+Redis server: a counter in the app's hash
/// tag, like a quota.
const SCRIPT: &str = "return redis.call('INCR', KEYS[1])";

struct Null {
    response: CheckResponse,
    redis: Option<(redis::aio::ConnectionManager, redis::Script)>,
}

#[tonic::async_trait]
impl Authorization for Null {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        if let Some((conn, script)) = &self.redis {
            let mut conn = conn.clone();
            let _: i64 = script
                .key("tollgate-bench:{app-0}:n")
                .invoke_async(&mut conn)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        Ok(Response::new(self.response.clone()))
    }
}

/// Runs a null server on `127.0.0.1:0` until killed. With `bare` it
/// answers a plain OK (no header mutations, no metadata): what Envoy's side
/// of an ext_authz call costs when the answer carries nothing.
pub async fn serve(redis_url: Option<String>, bare: bool) -> anyhow::Result<()> {
    let response = if bare {
        CheckResponse {
            status: Some(tollgate::grpc::pb::google::rpc::Status::default()),
            ..Default::default()
        }
    } else {
        crate::check::tollgate_allow_response().await?
    };
    let redis = match redis_url {
        Some(url) => {
            let client = redis::Client::open(url)?;
            let conn = redis::aio::ConnectionManager::new(client).await?;
            Some((conn, redis::Script::new(SCRIPT)))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let service = AuthorizationServer::new(Null { response, redis });
    tonic::transport::Server::builder()
        .add_service(service)
        // TCP_NODELAY, like tollgate's server.
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
