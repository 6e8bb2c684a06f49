use std::net::SocketAddr;

use boardroom_proto::cache::v1 as pb;
use boardroom_proto::cache::v1::cache_service_client::CacheServiceClient;
use boardroom_runtime::Config;
use boardroom_runtime::config::Secret;
use boardroom_testkit::{channel, service_test_config};
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub type Client = CacheServiceClient<Channel>;

pub struct TestApp {
    pub client: Client,
    pub addr: SocketAddr,
    pub cache: boardroom_cache::TieredCache,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The cache service on port 0: L1 only, unless `configure` sets a Redis URL.
pub async fn spawn_app(configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = service_test_config();
    configure(&mut config);
    let app = boardroom_cache_service::Application::build(&config)
        .await
        .expect("building the cache service");
    let addr = app.local_addr().expect("bound");
    let cache = app.cache().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        client: CacheServiceClient::new(channel(addr).await),
        addr,
        cache,
        shutdown,
        task,
    }
}

/// Authentication on, with callers `alpha` and `beta`.
pub fn with_callers(config: &mut Config) {
    config.auth.enabled = true;
    config.auth.tokens = [
        ("alpha".to_owned(), Secret::new("alpha-token")),
        ("beta".to_owned(), Secret::new("beta-token")),
    ]
    .into();
}

type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Authenticated = CacheServiceClient<InterceptedService<Channel, Interceptor>>;

/// A client presenting `token`.
pub async fn client_with_token(addr: SocketAddr, token: &'static str) -> Authenticated {
    let interceptor: Interceptor = Box::new(move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        Ok(request)
    });
    CacheServiceClient::with_interceptor(channel(addr).await, interceptor)
}

pub fn entry(key: &str, value: &str, tags: &[&str]) -> pb::Entry {
    pb::Entry {
        key: key.to_owned(),
        value: Bytes::from(value.to_owned()),
        ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

pub fn found(lookups: &[pb::Lookup]) -> Vec<Option<&str>> {
    lookups
        .iter()
        .map(|l| {
            l.found
                .then(|| std::str::from_utf8(&l.value).expect("utf-8"))
        })
        .collect()
}

/// The `(field, description)` pairs of an INVALID_ARGUMENT.
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .expect("a BadRequest")
        .field_violations
        .iter()
        .map(|v| (v.field.clone(), v.description.clone()))
        .collect()
}
