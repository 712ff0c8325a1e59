//! Request counters and timings, rendered in the Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::state::lock;

#[derive(Default)]
struct RouteStats {
    count: u64,
    seconds: f64,
}

/// Counters kept by the metrics middleware.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(String, String, u16), RouteStats>>,
}

impl Metrics {
    /// Records one answered request.
    pub fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        let mut routes = lock(&self.routes);
        let stats = routes
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        stats.count += 1;
        stats.seconds += took.as_secs_f64();
    }

    /// The Prometheus exposition text, with node-level gauges appended.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let routes = lock(&self.routes);
        out.push_str(
            "# HELP medmesh_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE medmesh_http_requests_total counter\n");
        for ((method, route, status), s) in routes.iter() {
            let _ = writeln!(
                out,
                "medmesh_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP medmesh_http_request_seconds_total Time spent answering, by route and status.\n");
        out.push_str("# TYPE medmesh_http_request_seconds_total counter\n");
        for ((method, route, status), s) in routes.iter() {
            let _ = writeln!(
                out,
                "medmesh_http_request_seconds_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {:.6}",
                s.seconds
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
