//! JSON log lines that name their trace: `trace_id` and `span_id` of the span an event is
//! written in, next to the usual timestamp, level, target, fields and span.
//!
//! tracing-opentelemetry keeps a span's OpenTelemetry context in the span's extensions and
//! hands it out only through the dispatcher ([`tracing_opentelemetry::get_otel_context`]),
//! which cannot be reached from inside an event's dispatch. [`TraceIds`] therefore keeps the
//! dispatcher it was registered with and, at the first event in a span, stores that span's
//! ids in the span's extensions, where [`JsonWithTraceIds`] reads them while formatting.

use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A span's OpenTelemetry ids, in hex.
#[derive(Debug, Clone)]
struct SpanIds {
    trace_id: String,
    span_id: String,
}

/// Finds the ids of the span an event is written in (see the module docs). Goes after the
/// OpenTelemetry layer and before the formatting layer.
#[derive(Default)]
pub(super) struct TraceIds {
    dispatch: OnceLock<WeakDispatch>,
}

impl<S> Layer<S> for TraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        if span.extensions().get::<SpanIds>().is_some() {
            return;
        }
        let id = span.id();
        // get_otel_context locks the span's extensions itself: hold no guard across it.
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return;
        };
        let Some(cx) = tracing_opentelemetry::get_otel_context(&id, &dispatch) else {
            return;
        };
        let otel = cx.span();
        let context = otel.span_context();
        if context.is_valid() {
            span.extensions_mut().insert(SpanIds {
                trace_id: context.trace_id().to_string(),
                span_id: context.span_id().to_string(),
            });
        }
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `fields`, `span` (its name and
/// fields), and `trace_id`/`span_id` when the event is written inside a traced span.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct JsonWithTraceIds;

impl<S> FormatEvent<S, JsonFields> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        let metadata = event.metadata();
        line.insert("level".into(), Value::String(metadata.level().to_string()));
        let mut fields = FieldsVisitor(Map::new());
        event.record(&mut fields);
        line.insert("fields".into(), Value::Object(fields.0));
        line.insert("target".into(), Value::String(metadata.target().to_owned()));
        let mut text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        if let Some(span) = ctx.parent_span() {
            // The span's fields are JSON already (JsonFields): spliced in, not parsed again.
            text.pop(); // the line's closing brace
            text.push_str(",\"span\":{\"name\":");
            text.push_str(&serde_json::to_string(span.name()).map_err(|_| std::fmt::Error)?);
            if let Some(formatted) = span.extensions().get::<FormattedFields<JsonFields>>() {
                let inner = formatted
                    .fields
                    .trim()
                    .strip_prefix('{')
                    .and_then(|f| f.strip_suffix('}'))
                    .unwrap_or("");
                if !inner.trim().is_empty() {
                    text.push(',');
                    text.push_str(inner);
                }
            }
            text.push('}');
            // The nearest span that has ids: an event in a span that never reached the
            // OpenTelemetry layer (filtered) still names its trace. (The guard above is gone:
            // a second read of one lock while a writer waits would deadlock.)
            let ids = span
                .scope()
                .find_map(|s| s.extensions().get::<SpanIds>().cloned());
            if let Some(ids) = ids {
                // Hex: nothing to escape.
                text.push_str(&format!(
                    ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                    ids.trace_id, ids.span_id
                ));
            }
            text.push('}');
        }
        writer.write_str(&text)?;
        writer.write_char('\n')
    }
}

/// An event's fields as JSON values.
struct FieldsVisitor(Map<String, Value>);

impl Visit for FieldsVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_inside_a_span_name_its_trace_and_lines_outside_do_not() {
        let provider = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(TraceIds::default())
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonWithTraceIds)
                    .with_writer(move || writer.clone()),
            );
        let dispatch = tracing::Dispatch::new(subscriber);
        let (trace_id, span_id) = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("outside");
            let span = tracing::info_span!("grpc.server", rpc.method = "GetThread");
            let _entered = span.enter();
            tracing::warn!(thread = 7, "inside");
            let inner = tracing::info_span!("db");
            inner.in_scope(|| tracing::info!("deeper"));
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let cx = span.context();
            let context = cx.span().span_context().clone();
            (
                context.trace_id().to_string(),
                context.span_id().to_string(),
            )
        });
        let text = String::from_utf8(lines.0.lock().expect("lock").clone()).expect("utf-8");
        let parsed: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(parsed.len(), 3, "{text}");
        assert!(parsed[0].get("trace_id").is_none(), "{}", parsed[0]);
        assert_eq!(parsed[1]["fields"]["message"], "inside");
        assert_eq!(parsed[1]["fields"]["thread"], 7);
        assert_eq!(parsed[1]["level"], "WARN");
        assert_eq!(parsed[1]["span"]["name"], "grpc.server");
        assert_eq!(parsed[1]["span"]["rpc.method"], "GetThread");
        assert_eq!(parsed[1]["trace_id"], trace_id.as_str());
        assert_eq!(parsed[1]["span_id"], span_id.as_str());
        assert_eq!(parsed[2]["trace_id"], trace_id.as_str(), "same trace");
        assert_ne!(parsed[2]["span_id"], span_id.as_str(), "its own span");
    }
}
