//! The tracing layer that turns events (with their spans' fields) into
//! [`super::format`] records, the bridge from the `log` crate, and the
//! panic hook.

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::format::{Entry, SpanFields, Value};

/// Collects an event's or a span's fields.
#[derive(Default)]
pub(crate) struct Collect {
    pub message: String,
    pub fields: Vec<(&'static str, Value)>,
}

impl Collect {
    fn put(&mut self, field: &Field, v: Value) {
        let name = field.name();
        // tracing-log's copies of the log record's metadata: the target,
        // file and line are not part of the message.
        if name.starts_with("log.") {
            return;
        }
        if name == "message" {
            if let Value::Str(s) = v {
                self.message = s;
                return;
            }
        }
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((name, v)),
        }
    }
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::Str(crate::worker::error_chain(value)));
    }
}

/// rookery's layer: every event at the configured level becomes one line.
pub(crate) struct LineLayer;

impl<S> Layer<S> for LineLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut c = Collect::default();
        attrs.record(&mut c);
        if !c.message.is_empty() {
            c.fields.insert(0, ("message", Value::Str(c.message)));
        }
        span.extensions_mut().insert(SpanFields {
            name: span.name(),
            fields: c.fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(f) = ext.get_mut::<SpanFields>() {
            let mut c = Collect {
                message: String::new(),
                fields: std::mem::take(&mut f.fields),
            };
            values.record(&mut c);
            f.fields = c.fields;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        event.record(&mut c);
        let spans: Vec<SpanFields> = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .filter_map(|s| s.extensions().get::<SpanFields>().cloned())
                    .collect()
            })
            .unwrap_or_default();
        super::emit(&Entry {
            level: *event.metadata().level(),
            message: &c.message,
            fields: &c.fields,
            spans: &spans,
        });
    }
}

/// Records of the `log` crate become tracing events (so they reach this
/// layer, or a user's). `false` when another logger is already installed.
pub(crate) fn bridge_log() -> bool {
    tracing_log::LogTracer::init().is_ok()
}

/// A panic becomes one error line with its location (`thread 'main'
/// panicked at src/job.rs:12:5: index out of bounds ...`), instead of the
/// default hook's lines on stderr (which a worker's captured stderr would
/// log as several unrelated lines); at debug level the backtrace follows
/// as one more record (its frames in the `backtrace` field).
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let at = info
            .location()
            .map_or_else(|| "an unknown location".to_string(), |l| l.to_string());
        tracing::error!("thread '{name}' panicked at {at}: {what}");
        if super::current_level() >= super::Level::Debug {
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            tracing::debug!(backtrace = %bt, "backtrace of the panic at {at}");
        }
    }));
}
