//! Several services in one process (`boardroom serve`), each exporting under its own
//! `service.name`: a span processor that routes every span to the batch processor of the
//! service it belongs to.
//!
//! A span belongs to the service of its local parent. A span without one (a server span
//! continuing a remote caller, or a root) is classified by its `rpc.service` attribute (the
//! gRPC package of the call) or its `boardroom.service` attribute (set by servers that are not
//! gRPC); anything else belongs to the process. A call from one service to its neighbour in
//! the same process therefore starts a new service at the callee's server span, whose parent
//! is remote (it came through `traceparent`), even though the client span is in this process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanId, TraceContextExt};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

/// A service of the process: the gRPC package prefix of its calls and its `service.name`.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRoute {
    /// Prefix of the full names of its gRPC services, e.g. `boardroom.session.`.
    pub rpc_prefix: &'static str,
    /// Its `service.name`, e.g. `boardroom-session`.
    pub name: &'static str,
}

/// Routes spans to one inner processor per service, the last one being the process's own.
#[derive(Debug)]
pub(super) struct ServiceRouter<P> {
    routes: Vec<ServiceRoute>,
    process_name: String,
    /// One per route, then the process's.
    processors: Vec<P>,
    /// Spans started and not yet ended → the index of their processor.
    open: Mutex<HashMap<SpanId, usize>>,
}

impl<P: SpanProcessor> ServiceRouter<P> {
    /// `processors` holds one per route and then one for the process, in that order.
    pub(super) fn new(routes: Vec<ServiceRoute>, process_name: String, processors: Vec<P>) -> Self {
        assert_eq!(
            processors.len(),
            routes.len() + 1,
            "a processor per route + one"
        );
        Self {
            routes,
            process_name,
            processors,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn process_index(&self) -> usize {
        self.routes.len()
    }

    /// The service of a span that has no local parent, from its attributes.
    fn classify(&self, span: &Span) -> usize {
        let Some(data) = span.exported_data() else {
            return self.process_index();
        };
        for attribute in &data.attributes {
            let Value::String(value) = &attribute.value else {
                continue;
            };
            let value = value.as_str();
            let found = match attribute.key.as_str() {
                "rpc.service" => self
                    .routes
                    .iter()
                    .position(|r| value.starts_with(r.rpc_prefix)),
                "boardroom.service" => self.routes.iter().position(|r| r.name == value),
                _ => None,
            };
            if let Some(index) = found {
                return index;
            }
        }
        self.process_index()
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<SpanId, usize>> {
        // A poisoned map only ever lost an insert or a remove: keep using it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<P: SpanProcessor> SpanProcessor for ServiceRouter<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        let parent = cx.span();
        let parent = parent.span_context();
        let inherited = if parent.is_valid() && !parent.is_remote() {
            self.open().get(&parent.span_id()).copied()
        } else {
            None
        };
        let index = inherited.unwrap_or_else(|| self.classify(span));
        self.open().insert(span.span_context().span_id(), index);
        self.processors[index].on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let index = self
            .open()
            .remove(&span.span_context.span_id())
            .unwrap_or(self.process_index());
        self.processors[index].on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.processors
            .iter()
            .map(SpanProcessor::force_flush)
            .fold(Ok(()), Result::and)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.processors
            .iter()
            .map(|p| p.shutdown_with_timeout(timeout))
            .fold(Ok(()), Result::and)
    }

    /// Every inner processor exports under its own `service.name`; the rest of the process's
    /// resource (environment, SDK attributes) is shared.
    fn set_resource(&mut self, resource: &Resource) {
        let names: Vec<String> = self
            .routes
            .iter()
            .map(|r| r.name.to_owned())
            .chain(std::iter::once(self.process_name.clone()))
            .collect();
        for (processor, name) in self.processors.iter_mut().zip(names) {
            let own = Resource::builder_empty()
                .with_attributes(
                    resource
                        .iter()
                        .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
                )
                .with_service_name(name)
                .build();
            processor.set_resource(&own);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::KeyValue;
    use opentelemetry::trace::{
        SpanContext, SpanKind, TraceFlags, TraceState, Tracer, TracerProvider as _,
    };
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// Records the names of the spans it ends, and the resource it was given.
    #[derive(Debug, Default, Clone)]
    struct Recorder {
        ended: Arc<Mutex<Vec<String>>>,
        resource: Arc<Mutex<Option<String>>>,
    }

    impl SpanProcessor for Recorder {
        fn on_start(&self, _span: &mut Span, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.ended.lock().expect("lock").push(span.name.to_string());
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn set_resource(&mut self, resource: &Resource) {
            let name = resource
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|v| v.to_string());
            *self.resource.lock().expect("lock") = name;
        }
    }

    impl Recorder {
        fn ended(&self) -> Vec<String> {
            self.ended.lock().expect("lock").clone()
        }
    }

    #[test]
    fn spans_go_to_the_service_of_their_server_span() {
        let recorders: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
        let routes = vec![
            ServiceRoute {
                rpc_prefix: "boardroom.session.",
                name: "boardroom-session",
            },
            ServiceRoute {
                rpc_prefix: "boardroom.conversation.",
                name: "boardroom-conversation",
            },
        ];
        let router = ServiceRouter::new(routes, "boardroom".into(), recorders.clone());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(router)
            .build();
        let tracer = provider.tracer("test");

        // A conversation call: its server span, a child, and a client span to the session
        // service whose server span (remote parent, same process) belongs to the session.
        let server = tracer
            .span_builder("boardroom.conversation.v1.ConversationService/RunTurn")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new(
                "rpc.service",
                "boardroom.conversation.v1.ConversationService",
            )])
            .start(&tracer);
        let server_cx = Context::current_with_span(server);
        let client = tracer.start_with_context("grpc.client", &server_cx);
        let client_cx = server_cx.with_span(client);
        let remote = SpanContext::new(
            client_cx.span().span_context().trace_id(),
            client_cx.span().span_context().span_id(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let callee = tracer
            .span_builder("boardroom.session.v1.SessionService/GetThread")
            .with_attributes([KeyValue::new(
                "rpc.service",
                "boardroom.session.v1.SessionService",
            )])
            .start_with_context(&tracer, &Context::new().with_remote_span_context(remote));
        let callee_cx = Context::current_with_span(callee);
        let query = tracer.start_with_context("db threads.get", &callee_cx);
        drop(query);
        drop(callee_cx);
        drop(client_cx);
        drop(server_cx);
        // Background work with no parent and no service attribute: the process's.
        drop(tracer.start("tick"));

        assert_eq!(
            recorders[0].ended(),
            [
                "db threads.get",
                "boardroom.session.v1.SessionService/GetThread"
            ]
        );
        assert_eq!(
            recorders[1].ended(),
            [
                "grpc.client",
                "boardroom.conversation.v1.ConversationService/RunTurn"
            ]
        );
        assert_eq!(recorders[2].ended(), ["tick"]);
        let names: Vec<_> = recorders
            .iter()
            .map(|r| r.resource.lock().expect("lock").clone())
            .collect();
        assert_eq!(
            names,
            [
                Some("boardroom-session".to_owned()),
                Some("boardroom-conversation".to_owned()),
                Some("boardroom".to_owned())
            ]
        );
    }
}
