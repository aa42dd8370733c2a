//! DHT query metrics: how many queries this node ran, by kind and outcome, and how
//! long each took. Live (atomics); `/debug/metrics/prometheus` registers clones, which
//! share them.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Debug, Clone)]
pub struct DhtMetrics {
    /// Queries finished, labelled `kind` (bootstrap, provide, find_providers,
    /// find_peer) and `outcome` (ok or error).
    pub queries: Family<Vec<(String, String)>, Counter>,
    pub seconds: Histogram,
}

impl Default for DhtMetrics {
    fn default() -> Self {
        DhtMetrics {
            queries: Family::default(),
            // 10 ms to about 80 s, doubling: a query's timeout is 60 s.
            seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        }
    }
}

impl DhtMetrics {
    pub(crate) fn record(&self, kind: &str, ok: bool, took: Duration) {
        let labels = vec![
            ("kind".to_string(), kind.to_string()),
            (
                "outcome".to_string(),
                if ok { "ok" } else { "error" }.to_string(),
            ),
        ];
        self.queries.get_or_create(&labels).inc();
        self.seconds.observe(took.as_secs_f64());
    }
}
