//! Measuring: latency samples and their percentiles, closed-loop load phases,
//! and the resident memory of the service process.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Latencies of one phase, and how much work it completed in how long.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// One latency per call, unordered.
    pub latencies: Vec<Duration>,
    /// Items (events, pages, calls) the calls completed.
    pub items: u64,
    /// Wall time from the first call's start to the last call's end.
    pub elapsed: Duration,
    /// Calls that failed (not in `latencies` or `items`).
    pub failures: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

impl Phase {
    /// Items per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.items as f64 / secs } else { 0.0 }
    }

    /// Calls per second.
    pub fn calls_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.latencies.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// The p50, p95 and p99 latencies.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.latencies)
    }

    /// Adds the calls of `other`, run after this phase, to it.
    pub fn absorb(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.items += other.items;
        self.elapsed += other.elapsed;
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs the workloads `a` and `b` by turns, `rounds` slices of `duration /
/// rounds` each (`a`, `b`, `a`, `b`, …), and returns each one's calls
/// together: whatever else the machine does over the run falls on both
/// alike, so their ratio drifts less than with one phase after the other.
/// One more slice of each runs first and is not counted: it warms both up
/// (pooled connections' caches, the server's threads), so neither side's
/// figures carry the other's cold start.
pub async fn by_turns<A, FA, B, FB>(
    rounds: u32,
    duration: Duration,
    mut a: A,
    mut b: B,
) -> anyhow::Result<(Phase, Phase)>
where
    A: FnMut(Duration) -> FA,
    FA: Future<Output = anyhow::Result<Phase>>,
    B: FnMut(Duration) -> FB,
    FB: Future<Output = anyhow::Result<Phase>>,
{
    let rounds = rounds.max(1);
    let slice = duration / rounds;
    a(slice).await?;
    b(slice).await?;
    let (mut first, mut second) = (Phase::default(), Phase::default());
    for _ in 0..rounds {
        first.absorb(a(slice).await?);
        second.absorb(b(slice).await?);
    }
    Ok((first, second))
}

/// The three latency percentiles the report shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (all zero when there are none).
    pub fn of(samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Self {
            p50: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            p99: percentile(&sorted, 99.0),
        }
    }
}

/// The nearest-rank `pct` percentile of ascending `sorted`.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank within 0..=len, saturating"
    )]
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `clients` closed loops of `call` until `duration` has passed (each
/// loop finishes its call in flight) and collects one latency per successful
/// call. `call(client, iteration)` returns how many items the call
/// completed; failed calls are counted and the loop goes on, so an overload
/// shows in the report instead of ending the run.
pub async fn closed_loop<F, Fut>(clients: usize, duration: Duration, call: F) -> anyhow::Result<Phase>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let deadline = Instant::now() + duration;
    loops(clients, move || Instant::now() < deadline, call).await
}

/// [`closed_loop`] until `stop` is cancelled (by whatever the phase lasts
/// for, such as a process running beside it).
pub async fn closed_loop_until<F, Fut>(
    clients: usize,
    stop: CancellationToken,
    call: F,
) -> anyhow::Result<Phase>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    loops(clients, move || !stop.is_cancelled(), call).await
}

/// `clients` loops of `call`, each starting another call while `go_on()`.
async fn loops<G, F, Fut>(clients: usize, go_on: G, call: F) -> anyhow::Result<Phase>
where
    G: Fn() -> bool + Clone + Send + 'static,
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let call = call.clone();
        let go_on = go_on.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Phase::default();
            let mut iteration = 0;
            while go_on() {
                let begun = Instant::now();
                match call(client, iteration).await {
                    Ok(items) => {
                        done.items += items;
                        done.latencies.push(begun.elapsed());
                    }
                    Err(error) => {
                        done.failures += 1;
                        done.first_error.get_or_insert_with(|| format!("{error:#}"));
                        // No hot loop against a service that refuses everything.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                iteration += 1;
            }
            done
        }));
    }
    let mut phase = Phase::default();
    for task in tasks {
        // The loops ran side by side: the phase's time is set below.
        phase.absorb(task.await.context("load task panicked")?);
    }
    if phase.latencies.is_empty() {
        anyhow::bail!(
            "every call failed; the first: {}",
            phase.first_error.as_deref().unwrap_or("(none)")
        );
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

/// Resident memory of a process, from `/proc/PID/status`, in KiB:
/// `(VmRSS, VmHWM)` (now, and the peak over the process's life).
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (the service's memory)"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples a process's VmRSS (every 50 ms unless told) and keeps the
/// largest value, so a phase's peak is known even though VmHWM only ever
/// grows.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid` every 50 ms.
    pub fn start(pid: u32) -> Self {
        Self::every(pid, Duration::from_millis(50))
    }

    /// Starts sampling `pid` every `interval`.
    pub fn every(pid: u32, interval: Duration) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (peak, stop) = (peak.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((rss, _)) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(interval).await;
                }
            })
        };
        Self { peak, stop, task }
    }

    /// Stops sampling and returns the largest VmRSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn by_turns_alternates_and_adds_up_each_side() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let run = |name: &'static str, order: Arc<std::sync::Mutex<Vec<&'static str>>>| {
            move |slice: Duration| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(name);
                    Ok(Phase {
                        latencies: vec![slice],
                        items: 2,
                        elapsed: slice,
                        ..Phase::default()
                    })
                }
            }
        };
        let (a, b) = by_turns(
            3,
            Duration::from_millis(300),
            run("a", order.clone()),
            run("b", order.clone()),
        )
        .await
        .unwrap();
        // A warm-up turn each, not counted, then three counted turns.
        assert_eq!(*order.lock().unwrap(), ["a", "b", "a", "b", "a", "b", "a", "b"]);
        for phase in [a, b] {
            assert_eq!(phase.latencies, vec![Duration::from_millis(100); 3]);
            assert_eq!(phase.items, 6);
            assert_eq!(phase.elapsed, Duration::from_millis(300));
        }
    }

    #[tokio::test]
    async fn closed_loop_until_stops_once_cancelled() {
        let stop = CancellationToken::new();
        let stopper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.cancel();
            })
        };
        let phase = tokio::time::timeout(
            Duration::from_secs(5),
            closed_loop_until(2, stop, |_, _| async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(1)
            }),
        )
        .await
        .expect("the loops stop once cancelled")
        .unwrap();
        stopper.await.unwrap();
        assert!(phase.items >= 2, "{phase:?}");
        assert_eq!(phase.items, phase.latencies.len() as u64);
        assert!(phase.elapsed >= Duration::from_millis(100), "{phase:?}");
    }

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples = ms(&(1..=100).rev().collect::<Vec<_>>());
        let p = Percentiles::of(&samples);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p95, Duration::from_millis(95));
        assert_eq!(p.p99, Duration::from_millis(99));
    }

    #[test]
    fn percentiles_of_few_samples_are_the_largest_that_rank_reaches() {
        let p = Percentiles::of(&ms(&[3, 1, 2]));
        assert_eq!(p.p50, Duration::from_millis(2));
        assert_eq!(p.p99, Duration::from_millis(3));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }

    #[test]
    fn rate_counts_items_over_wall_time() {
        let phase = Phase {
            latencies: ms(&[1, 1]),
            items: 500,
            elapsed: Duration::from_millis(250),
            ..Phase::default()
        };
        assert_eq!(phase.rate(), 2000.0);
        assert_eq!(phase.calls_per_sec(), 8.0);
    }
}
