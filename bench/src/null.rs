//! The null ext_authz servers: the physical limit of any ext_authz server
//! (decode the `CheckRequest`, answer allow) and, with `--redis`, the floor
//! of any exact quota shared across replicas (the same plus one `EVALSHA`
//! round trip per check, through the same Redis client and connection
//! manager tollgate uses).
//!
//! Both answer with the `CheckResponse` tollgate gives for the benchmark
//! request (identity headers, credential removals, RateLimit headers; no
//! dynamic metadata, which the benchmark policy does not ask for), so Envoy
//! does the same work behind them as behind tollgate. `tollgate-bench
//! answer` starts them with parts of the answer left out or the metadata
//! added ([`Answer`]). They run on the same multi-threaded tokio runtime as
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

/// What a null server answers.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// A plain OK (no header mutations, no metadata): what Envoy's side of
    /// an ext_authz call costs when the answer carries nothing.
    pub bare: bool,
    /// Add the dynamic metadata a policy asking for it gets.
    pub metadata: bool,
    /// Parts of tollgate's answer left out.
    pub without: Vec<crate::check::Part>,
}

impl Answer {
    async fn response(&self) -> anyhow::Result<CheckResponse> {
        if self.bare {
            return Ok(CheckResponse {
                status: Some(tollgate::grpc::pb::google::rpc::Status::default()),
                ..Default::default()
            });
        }
        let full = crate::check::tollgate_allow_response(self.metadata).await?;
        Ok(self.without.iter().fold(full, |response, part| {
            crate::check::without(response, *part)
        }))
    }

    /// The null server's arguments for this answer.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.bare {
            args.push("--bare".to_owned());
        }
        if self.metadata {
            args.push("--metadata".to_owned());
        }
        for part in &self.without {
            args.push("--without".to_owned());
            args.push(
                clap::ValueEnum::to_possible_value(part)
                    .expect("every part has a name")
                    .get_name()
                    .to_owned(),
            );
        }
        args
    }
}

/// Runs a null server on `127.0.0.1:0` until killed, answering `answer`.
pub async fn serve(redis_url: Option<String>, answer: Answer) -> anyhow::Result<()> {
    let response = answer.response().await?;
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
