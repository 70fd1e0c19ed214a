//! `GET /metrics` of `baton serve`, in the Prometheus/OpenMetrics text format:
//!
//! - `baton_deliveries_total{subscription, outcome}`: bus deliveries by outcome (`done`,
//!   `retry`, `later` a stage waiting, `dead`), and `baton_delivery_seconds{subscription}`
//!   a histogram of how long each took (the stage's time per delivery);
//! - `baton_queue_depth`, `baton_dead_letters`: messages waiting, and dead-lettered;
//! - `baton_pending_approvals{app, environment}`;
//! - `baton_runs{status}`: the newest 1,000 runs by status (`deployed`, `awaiting
//!   approval (production)`, …);
//! - DORA's four keys over the last 30 days per app and environment (from the run
//!   records, recomputed at most once a minute): `baton_dora_deployments`,
//!   `baton_dora_deployments_per_day`, `baton_dora_lead_time_seconds{quantile}`,
//!   `baton_dora_change_failures`, `baton_dora_change_failure_rate`,
//!   `baton_dora_time_to_restore_seconds`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::adapters::embedded::{Delivery, DeliveryReport};
use crate::error::{Error, Result};
use crate::pipeline::dora::{self, Figures};
use crate::pipeline::{Pipeline, approvals, runs};
use crate::ports::Ports;
use crate::runtime::local::LocalPorts;

/// Every metric family [`Metrics::render`] registers (a family without samples is left
/// out of a scrape: no restore yet, no pending approval).
pub const FAMILIES: &[&str] = &[
    "baton_deliveries",
    "baton_delivery_seconds",
    "baton_queue_depth",
    "baton_dead_letters",
    "baton_pending_approvals",
    "baton_runs",
    "baton_dora_deployments",
    "baton_dora_deployments_per_day",
    "baton_dora_lead_time_seconds",
    "baton_dora_change_failures",
    "baton_dora_change_failure_rate",
    "baton_dora_time_to_restore_seconds",
];

/// How long DORA figures are reused between scrapes.
const DORA_TTL: Duration = Duration::from_secs(60);
/// The window of the DORA figures.
const DORA_WINDOW_DAYS: i64 = 30;
/// Runs counted by `baton_runs`.
const RUNS: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    subscription: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvLabels {
    app: String,
    environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    app: String,
    environment: String,
    quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn delivery_histogram() -> Histogram {
    // 1 ms … 65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// Counters kept by the dispatcher, and the cached DORA figures.
pub struct Metrics {
    deliveries: Family<DeliveryLabels, Counter>,
    seconds: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    /// The figures and when they were computed; locked only to read or replace them.
    dora: std::sync::Mutex<Option<(Instant, Vec<Figures>)>>,
    /// Held while the figures are computed: one computation at a time, readers of the
    /// cached figures never wait for it.
    computing: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            deliveries: Family::default(),
            seconds: Family::new_with_constructor(delivery_histogram),
            dora: std::sync::Mutex::new(None),
            computing: tokio::sync::Mutex::new(()),
        }
    }
}

impl Metrics {
    /// Counts one delivery the dispatcher finished.
    pub fn observe(&self, d: &DeliveryReport) {
        let outcome = match d.outcome {
            Delivery::Done => "done",
            Delivery::Retry(_) => "retry",
            Delivery::Later(..) => "later",
            Delivery::Dead(_) => "dead",
        };
        self.deliveries
            .get_or_create(&DeliveryLabels {
                subscription: d.subscription.clone(),
                outcome: outcome.into(),
            })
            .inc();
        self.seconds
            .get_or_create(&SubscriptionLabels {
                subscription: d.subscription.clone(),
            })
            .observe(d.elapsed.as_secs_f64());
    }

    /// The DORA figures as last computed, however old (none before the first); the
    /// dashboard shows these and never waits for a computation.
    pub fn dora_cached(&self) -> Option<Vec<Figures>> {
        self.cached_dora(None)
    }

    /// The cached figures, when younger than `ttl` (any age without one).
    fn cached_dora(&self, ttl: Option<Duration>) -> Option<Vec<Figures>> {
        let cached = self.dora.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(at, _)| ttl.is_none_or(|t| at.elapsed() < t))
            .map(|(_, f)| f.clone())
    }

    /// DORA's four keys over the last 30 days, recomputed at most once a minute.
    pub async fn dora(&self, p: &Pipeline<LocalPorts>) -> Result<Vec<Figures>> {
        let _computing = self.computing.lock().await;
        if let Some(figures) = self.cached_dora(Some(DORA_TTL)) {
            return Ok(figures);
        }
        let until = p.ports.now();
        let since = until - chrono::Duration::days(DORA_WINDOW_DAYS);
        let figures = dora::compute(
            &dora::collect(p).await?,
            &p.config.environment_names(),
            since,
            until,
        );
        *self.dora.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), figures.clone()));
        Ok(figures)
    }

    /// The exposition: the counters, and gauges read now.
    pub async fn render(&self, p: &Pipeline<LocalPorts>) -> Result<String> {
        let mut r = Registry::with_prefix("baton");
        r.register(
            "deliveries",
            "Bus deliveries by subscription and outcome",
            self.deliveries.clone(),
        );
        r.register(
            "delivery_seconds",
            "Time of each bus delivery (the stage's work for one message)",
            self.seconds.clone(),
        );
        let bus = &p.ports.bus;
        let depth = Gauge::<i64>::default();
        depth.set(i64::try_from(bus.pending()).unwrap_or(i64::MAX));
        r.register("queue_depth", "Messages waiting on the bus", depth);
        let dead = Gauge::<i64>::default();
        dead.set(i64::try_from(bus.dead_letters().await?.len()).unwrap_or(i64::MAX));
        r.register("dead_letters", "Messages in the dead-letter list", dead);

        let pending = Family::<EnvLabels, Gauge>::default();
        for a in approvals::pending(p).await? {
            pending
                .get_or_create(&EnvLabels {
                    app: a.app,
                    environment: a.environment,
                })
                .inc();
        }
        r.register(
            "pending_approvals",
            "Approvals waiting for decisions",
            pending,
        );

        let by_status = Family::<StatusLabels, Gauge>::default();
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for run in runs::page(p, RUNS, None).await?.runs {
            *counts.entry(run.status.to_string()).or_default() += 1;
        }
        for (status, n) in counts {
            by_status.get_or_create(&StatusLabels { status }).set(n);
        }
        r.register("runs", "The newest 1,000 runs by status", by_status);

        let deployments = Family::<EnvLabels, Gauge>::default();
        let per_day = Family::<EnvLabels, FloatGauge>::default();
        let lead = Family::<QuantileLabels, FloatGauge>::default();
        let failures = Family::<EnvLabels, Gauge>::default();
        let rate = Family::<EnvLabels, FloatGauge>::default();
        let restore = Family::<EnvLabels, FloatGauge>::default();
        for f in self.dora(p).await? {
            let env = EnvLabels {
                app: f.app.clone(),
                environment: f.environment.clone(),
            };
            deployments
                .get_or_create(&env)
                .set(i64::from(f.deployments));
            per_day.get_or_create(&env).set(f.deployments_per_day);
            failures
                .get_or_create(&env)
                .set(i64::from(f.change_failures));
            for (q, v) in [("0.5", f.lead_time_p50), ("0.9", f.lead_time_p90)] {
                if let Some(v) = v {
                    lead.get_or_create(&QuantileLabels {
                        app: f.app.clone(),
                        environment: f.environment.clone(),
                        quantile: q.into(),
                    })
                    .set(v);
                }
            }
            if let Some(v) = f.change_failure_rate {
                rate.get_or_create(&env).set(v);
            }
            if let Some(v) = f.time_to_restore_p50 {
                restore.get_or_create(&env).set(v);
            }
        }
        r.register(
            "dora_deployments",
            "Deploys that succeeded in the last 30 days (rollbacks excluded)",
            deployments,
        );
        r.register(
            "dora_deployments_per_day",
            "Deployment frequency over the last 30 days",
            per_day,
        );
        r.register(
            "dora_lead_time_seconds",
            "Lead time, push to deployed, over the last 30 days",
            lead,
        );
        r.register(
            "dora_change_failures",
            "Failed or rolled-back deploys in the last 30 days",
            failures,
        );
        r.register(
            "dora_change_failure_rate",
            "Change failure rate over the last 30 days",
            rate,
        );
        r.register(
            "dora_time_to_restore_seconds",
            "Median time to restore over the last 30 days",
            restore,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .map_err(|e| Error::permanent("metrics", e))?;
        Ok(out)
    }
}
