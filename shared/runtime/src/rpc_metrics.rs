//! Per-method RPC metric handles, resolved once and reused: the hot path touches atomics
//! only, with no label strings built per call. Methods of services the server does not
//! register share one `unknown` entry, so that clients cannot inflate label cardinality.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Gauge, Histogram};

/// gRPC has 17 status codes (0..=16).
const CODES: usize = 17;

/// The handles of one `/service/method`.
pub(crate) struct MethodMetrics {
    server: &'static str,
    service: Arc<str>,
    method: Arc<str>,
    active: Gauge,
    outcomes: [OnceLock<(Counter, Histogram)>; CODES],
}

impl MethodMetrics {
    fn new(server: &'static str, service: &str, method: &str) -> Self {
        let (service, method): (Arc<str>, Arc<str>) = (service.into(), method.into());
        let active = metrics::gauge!(
            "rpc_server_active_requests",
            "server" => server,
            "rpc_service" => service.to_string(),
            "rpc_method" => method.to_string()
        );
        Self {
            server,
            service,
            method,
            active,
            outcomes: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    pub(crate) fn started(&self) {
        self.active.increment(1.0);
    }

    /// Records a finished call with its gRPC status code.
    pub(crate) fn finished(&self, code: i32, seconds: f64) {
        self.active.decrement(1.0);
        let index = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES)
            .unwrap_or(2); // 2 = UNKNOWN
        let (count, duration) = self.outcomes[index].get_or_init(|| {
            let labels = [
                ("server", self.server.to_owned()),
                ("rpc_system", "grpc".to_owned()),
                ("rpc_service", self.service.to_string()),
                ("rpc_method", self.method.to_string()),
                ("rpc_grpc_status_code", index.to_string()),
            ];
            (
                metrics::counter!("rpc_server_requests_total", &labels),
                metrics::histogram!("rpc_server_call_duration_seconds", &labels),
            )
        });
        count.increment(1);
        duration.record(seconds);
    }
}

/// The handles of every method of a server.
pub(crate) struct RpcMetrics {
    server: &'static str,
    known_services: Vec<String>,
    methods: RwLock<HashMap<String, Arc<MethodMetrics>>>,
    unknown: Arc<MethodMetrics>,
}

impl RpcMetrics {
    /// The handles of server `server` (the `server` label: which of a process's servers
    /// answered), which registers `known_services`.
    pub(crate) fn new(server: &'static str, known_services: Vec<String>) -> Self {
        Self {
            server,
            known_services,
            methods: RwLock::default(),
            unknown: Arc::new(MethodMetrics::new(server, "unknown", "unknown")),
        }
    }

    /// The handles of `path` (`/pkg.Service/Method`).
    pub(crate) fn for_path(&self, path: &str) -> Arc<MethodMetrics> {
        if let Some(found) = self.methods.read().ok().and_then(|m| m.get(path).cloned()) {
            return found;
        }
        let trimmed = path.trim_start_matches('/');
        let Some((service, method)) = trimmed.split_once('/') else {
            return self.unknown.clone();
        };
        if method.is_empty()
            || method.contains('/')
            || !self.known_services.iter().any(|s| s == service)
        {
            return self.unknown.clone();
        }
        let mut methods = match self.methods.write() {
            Ok(guard) => guard,
            Err(_) => return self.unknown.clone(),
        };
        methods
            .entry(path.to_owned())
            .or_insert_with(|| Arc::new(MethodMetrics::new(self.server, service, method)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_services_share_one_entry_and_known_ones_are_reused() {
        let metrics = RpcMetrics::new("test", vec!["pkg.Svc".into()]);
        let a = metrics.for_path("/pkg.Svc/Get");
        let b = metrics.for_path("/pkg.Svc/Get");
        assert!(Arc::ptr_eq(&a, &b));
        let x = metrics.for_path("/evil.Svc/Random1");
        let y = metrics.for_path("/evil.Svc/Random2");
        assert!(Arc::ptr_eq(&x, &y));
        assert!(Arc::ptr_eq(&metrics.for_path("/pkg.Svc/a/b"), &x));
        assert_eq!(metrics.methods.read().map(|m| m.len()).unwrap_or(0), 1);
    }
}
