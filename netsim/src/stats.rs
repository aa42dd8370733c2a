//! Latency summaries as the scenarios report them, and how busy the run kept the cores.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort();
        let at = |q| nearest_rank(&sorted, q).map_or(0.0, millis);
        Percentiles {
            count: sorted.len(),
            p50_ms: at(0.5),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The value at quantile `q` (0 to 1) of `sorted`, by nearest rank; None if empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let index = (last as f64 * q).round() as usize;
    Some(sorted[index.min(last)])
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Measures the share of this machine's cores the process kept busy over a span. Near
/// 1 the simulator could not keep up: latencies include waiting for a core, which a
/// real peer on its own machine would not (see `--time-dilation`).
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    cpu: Option<Duration>,
    wall: Instant,
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter {
            cpu: process_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// Busy share of the cores since [`CpuMeter::start`], 0 to 1 (None off Linux).
    pub fn busy(&self) -> Option<f64> {
        let used = process_cpu_time()?.checked_sub(self.cpu?)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let available = self.wall.elapsed().as_secs_f64() * cores as f64;
        Some((used.as_secs_f64() / available.max(f64::EPSILON)).min(1.0))
    }
}

/// CPU time (user and system) of all this process's threads so far, from
/// `/proc/self/stat`, whose clock ticks are 1/100 s on Linux.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces, start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ms, 51.0);
        assert_eq!(p.p95_ms, 95.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert_eq!(Percentiles::of(&[]).count, 0);
    }

    #[test]
    fn cpu_spent_spinning_shows_as_busy_cores() {
        let meter = CpuMeter::start();
        let cpu_before = process_cpu_time().expect("Linux reports CPU time");
        // Spin until this process has spent 300 ms of CPU, however long a busy
        // machine takes to give them.
        let spent = Duration::from_millis(300);
        let mut spins = 0u64;
        while process_cpu_time().unwrap() < cpu_before + spent {
            spins = std::hint::black_box(spins + 1);
        }
        let wall = meter.wall.elapsed();
        let busy = meter.busy().unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let at_least = spent.as_secs_f64() / (wall.as_secs_f64() * cores);
        // Clock ticks are 10 ms: allow one either side.
        assert!(
            busy >= at_least * 0.95 - 0.01 && busy <= 1.0,
            "busy {busy}, at least {at_least}"
        );
    }
}
