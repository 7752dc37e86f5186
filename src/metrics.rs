//! `GET /metrics` in the Prometheus text format (prometheus-client): invocations by
//! function, trigger and outcome, durations, queue depth, running invocations, timer
//! lateness, watch latency, watch triggers by state, compile and instantiation times, hot
//! reloads, and the store's size.
//!
//! The metrics are one process-wide set, as Prometheus clients are: every part of the host
//! records into it without being handed a reference.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sandbox::{Failure, Outcome};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    function: String,
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    function: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    function: String,
}

pub struct Metrics {
    registry: Registry,
    outbound: Family<OutboundLabels, Counter>,
    outbound_durations: Family<NameLabel, Histogram>,
    invocations: Family<InvocationLabels, Counter>,
    durations: Family<FunctionLabels, Histogram>,
    queue_depth: Gauge,
    running: Gauge,
    store_bytes: Gauge,
    body_bytes: Gauge,
    timer_lateness: Histogram,
    watch_latency: Histogram,
    compile: Histogram,
    instantiate: Histogram,
    reloads: Family<ReloadLabels, Counter>,
    watches: Family<WatchLabels, Gauge>,
    records_dropped: Counter,
    claims: Histogram,
}

/// The gauges read when `/metrics` is scraped.
pub struct Gauges {
    pub queue_depth: i64,
    pub running: i64,
    pub store_bytes: i64,
    pub body_bytes: i64,
}

/// How a hot reload ended, for `jobhost_reloads_total{result}`.
#[derive(Debug, Clone, Copy)]
pub enum Reloaded {
    /// The configuration and the functions were read again and installed.
    Applied,
    /// `runtime.toml` did not validate: the previous configuration keeps running.
    InvalidConfiguration,
    /// `runtime.toml` was gone or empty for a moment: the previous one keeps running.
    ConfigurationMissing,
}

/// Buckets from 50 µs to about 7 minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 24))
}

/// Buckets of `jobhost_claim_seconds`, 100 µs to 10 s in steps of 1, 2 and 5: a bound at
/// every round target (10 ms, 20 ms, 50 ms) an operator may hold a claim's p99 to, which
/// the doubling buckets of the other histograms (12.8 ms, 25.6 ms) do not have.
const CLAIM_BUCKETS: [f64; 16] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("jobhost");
    let invocations = Family::<InvocationLabels, Counter>::default();
    registry.register(
        "invocations",
        "Invocations finished, by function, trigger and outcome",
        invocations.clone(),
    );
    let durations =
        Family::<FunctionLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
    registry.register(
        "invocation_duration_seconds",
        "Run time of invocations",
        durations.clone(),
    );
    let queue_depth = Gauge::default();
    registry.register(
        "queue_depth",
        "Durable invocations waiting to run (queued, scheduled for later, or awaiting a retry)",
        queue_depth.clone(),
    );
    let running = Gauge::default();
    registry.register(
        "running_invocations",
        "Invocations running now",
        running.clone(),
    );
    let body_bytes = Gauge::default();
    registry.register(
        "request_body_bytes",
        "Bytes of memory held for request bodies now, a body of declared length counting whole from its start (bounded by max_body_memory)",
        body_bytes.clone(),
    );
    let store_bytes = Gauge::default();
    registry.register(
        "store_bytes",
        "Bytes the invocation store takes on disk",
        store_bytes.clone(),
    );
    let timer_lateness = seconds();
    registry.register(
        "timer_lateness_seconds",
        "From a timer's occurrence to its queueing",
        timer_lateness.clone(),
    );
    let watch_latency = seconds();
    registry.register(
        "watch_latency_seconds",
        "From a watched file's last write to its queueing",
        watch_latency.clone(),
    );
    let compile = seconds();
    registry.register(
        "module_compile_seconds",
        "Loading a module: compiling (or reading the cache) and linking",
        compile.clone(),
    );
    let instantiate = seconds();
    registry.register(
        "instantiation_seconds",
        "Instantiating a guest for one invocation (for a wasi:http instance made ahead, before its request came)",
        instantiate.clone(),
    );
    let reloads = Family::<ReloadLabels, Counter>::default();
    registry.register(
        "reloads",
        "Hot reloads of functions/ and runtime.toml, by result",
        reloads.clone(),
    );
    let watches = Family::<WatchLabels, Gauge>::default();
    registry.register(
        "watches",
        "Watch triggers by state: watching their folder, or waiting for it to exist",
        watches.clone(),
    );
    let records_dropped = Counter::default();
    registry.register(
        "records_dropped",
        "Records of synchronous invocations dropped: the store could not be reached and the records waiting for it filled their buffer",
        records_dropped.clone(),
    );
    let claims = Histogram::new(CLAIM_BUCKETS);
    registry.register(
        "claim_seconds",
        "One look at the store for due background work: the claim of what this host can start",
        claims.clone(),
    );
    let outbound = Family::<OutboundLabels, Counter>::default();
    registry.register(
        "outbound_requests",
        "Guests' outbound HTTP requests, by function and status (the answer's code, `denied` or `error`)",
        outbound.clone(),
    );
    let outbound_durations =
        Family::<NameLabel, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
    registry.register(
        "outbound_request_duration_seconds",
        "From a guest's outbound request to its answer's head",
        outbound_durations.clone(),
    );
    Metrics {
        registry,
        outbound,
        outbound_durations,
        records_dropped,
        claims,
        watches,
        invocations,
        durations,
        queue_depth,
        running,
        store_bytes,
        body_bytes,
        timer_lateness,
        watch_latency,
        compile,
        instantiate,
        reloads,
    }
});

/// Where a watch trigger is, for `jobhost_watches{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchState {
    /// Its folder does not exist (yet, or any more).
    Waiting,
    /// Watching its folder, with what was there already handled.
    Watching,
}

/// One watch trigger's place in `jobhost_watches`; it leaves the count when dropped.
#[derive(Default)]
pub struct WatchGauge {
    state: Option<WatchState>,
}

impl WatchGauge {
    pub fn set(&mut self, state: WatchState) {
        if self.state != Some(state) {
            self.leave();
            watch_gauge(state).inc();
            self.state = Some(state);
        }
    }

    fn leave(&mut self) {
        if let Some(old) = self.state.take() {
            watch_gauge(old).dec();
        }
    }
}

impl Drop for WatchGauge {
    fn drop(&mut self) {
        self.leave();
    }
}

fn watch_gauge(state: WatchState) -> Gauge {
    let state = match state {
        WatchState::Waiting => "waiting",
        WatchState::Watching => "watching",
    };
    get().watches.get_or_create(&WatchLabels { state }).clone()
}

impl Metrics {
    /// Synchronous records dropped for want of a store to write them to.
    pub fn records_dropped(&self, n: usize) {
        self.records_dropped.inc_by(n as u64);
    }

    /// How long one claim of due background work took.
    pub fn claim(&self, took: Duration) {
        self.claims.observe(took.as_secs_f64());
    }
}

pub fn get() -> &'static Metrics {
    &METRICS
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match &outcome.result {
        Ok(()) => "succeeded",
        Err(Failure::Timeout) => "timeout",
        Err(Failure::MemoryLimit) => "memory_limit",
        Err(Failure::CpuLimit) => "cpu_limit",
        Err(Failure::Trap(_)) => "trap",
        Err(Failure::Exit(_)) => "exit",
        Err(Failure::Host(_)) => "host_error",
        Err(Failure::Cancelled) => "cancelled",
        Err(Failure::ChainTooDeep(_)) => "chain_too_deep",
    }
}

impl Metrics {
    pub fn invocation(&self, function: &str, trigger: &str, outcome: &Outcome) {
        let labels = InvocationLabels {
            function: function.to_string(),
            trigger: trigger.to_string(),
            outcome: outcome_label(outcome).to_string(),
        };
        self.invocations.get_or_create(&labels).inc();
        let labels = FunctionLabels {
            function: function.to_string(),
            trigger: trigger.to_string(),
        };
        self.durations
            .get_or_create(&labels)
            .observe(outcome.duration.as_secs_f64());
        if let Some(d) = outcome.instantiation {
            self.instantiate.observe(d.as_secs_f64());
        }
    }

    /// One outbound request of `function`'s guest.
    pub fn outbound(&self, function: &str, status: String, took: Duration) {
        let labels = OutboundLabels {
            function: function.to_string(),
            status,
        };
        self.outbound.get_or_create(&labels).inc();
        self.outbound_durations
            .get_or_create(&NameLabel {
                function: function.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn timer_lateness(&self, late: Duration) {
        self.timer_lateness.observe(late.as_secs_f64());
    }

    pub fn watch_latency(&self, latency: Duration) {
        self.watch_latency.observe(latency.as_secs_f64());
    }

    pub fn reloaded(&self, result: Reloaded) {
        let result = match result {
            Reloaded::Applied => "applied",
            Reloaded::InvalidConfiguration => "invalid_configuration",
            Reloaded::ConfigurationMissing => "configuration_missing",
        };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn compiled(&self, took: Duration) {
        self.compile.observe(took.as_secs_f64());
    }

    /// The text of `/metrics`, with the gauges read now.
    pub fn render(&self, gauges: &Gauges) -> String {
        self.queue_depth.set(gauges.queue_depth);
        self.running.set(gauges.running);
        self.store_bytes.set(gauges.store_bytes);
        self.body_bytes.set(gauges.body_bytes);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
