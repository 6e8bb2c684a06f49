//! Calls to a server of the same process, without a socket.
//!
//! `boardroom serve` runs every service in one process, and the conversation service calls the
//! session service and the gateway on every turn: 8 of a user-round's 14 calls, 4 of them
//! streams whose every event crossed loopback TCP, HTTP/2 framing and two connection tasks'
//! wake-ups. A server registered here is called directly: the request goes through the
//! server's own inbound layer (the same instance the network path uses, so authentication,
//! admission, deadlines, RED metrics and the trace context are applied and counted as for any
//! caller) to its router, in a task of its own as over HTTP/2, and the response body is the
//! server's own body, polled by the caller. Only the transport is left out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, RwLock};

use tower::util::BoxCloneSyncService;

/// A server's routes behind its inbound layer, callable in process.
pub type LocalService = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// The servers of this process, by the address their callers are configured with.
static SERVERS: LazyLock<RwLock<HashMap<Arc<str>, LocalService>>> = LazyLock::new(Default::default);

/// Makes `service` answer the calls of channels built for `address` (`http://host:port`, as a
/// caller's config names it) in this process, when their `client.in_process` is on. Written at
/// start-up, before the callers build their channels.
pub fn serve_in_process(address: &str, service: LocalService) {
    let mut servers = SERVERS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    servers.insert(key(address).into(), service);
}

/// The server of this process registered for `address`, if any.
pub(crate) fn in_process(address: &str) -> Option<LocalService> {
    let servers = SERVERS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    servers.get(key(address)).cloned()
}

fn key(address: &str) -> &str {
    address.trim_end_matches('/')
}
