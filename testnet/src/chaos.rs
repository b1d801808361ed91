//! Chaos runs: a seeded schedule of faults against a running cluster while
//! a client keeps submitting and reading, then heal, converge and check.
//!
//! The point is to catch a cluster breaking its promises (an acknowledged
//! attestation lost, nodes diverging, a read later undone) under faults
//! that happen in production: crashed or restarted processes, stalled
//! ones (SIGSTOP: a long GC pause, a frozen VM), partitions and slow links.
//!
//! Determinism: the fault schedule is a pure function of the seed, the
//! node count, the duration and the fault kinds ([`schedule`]), so a
//! failing seed can be replayed. The load and the timing of a real
//! cluster are not deterministic; the schedule is what a seed pins down.
//!
//! Safety margin: by default at most a minority (`(n - 1) / 2`) of the
//! nodes is faulty at any moment, so the cluster should stay available and
//! every violation the checker finds is a bug, not an expected outage.
//!
//! Threads: faults are applied on the caller's thread, because a node
//! started (restarted) by a thread dies with that thread (the testnet's
//! parent-death signal); load runs on scoped worker threads.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bizra_client::{Client, Policy, Wait};
use serde::{Deserialize, Serialize};

use crate::checker::{check_cluster, CheckReport, History, Location, Verdict};
use crate::cluster::{Cluster, Stress, MAX_STRESS};
use crate::error::{Result, TestnetError};
use crate::proxy::MAX_DELAY;

/// No fault in the first moments: the load starts on a healthy cluster.
const WARMUP_MS: u64 = 2_000;
/// Pause between one fault's start and the next's, drawn uniformly.
const GAP_MS: (u64, u64) = (1_000, 3_000);
/// How long a fault lasts before it is healed, drawn uniformly.
const HOLD_MS: (u64, u64) = (2_000, 5_000);
/// How long a restart counts as a broken node when keeping to the
/// minority bound (it has no hold, but the node is down while it starts).
const RESTART_COST_MS: u64 = 3_000;
/// Extra one-way delay a latency fault adds on each of a node's links
/// (both directions, so 600 ms more per round trip).
const LATENCY_ONE_WAY: Duration = Duration::from_millis(300);
/// Busy threads of a stress fault (the machines we test on have 2 CPUs).
const STRESS_THREADS: usize = 2;
/// Back-off of a load worker after a failed request.
const WORKER_BACKOFF: Duration = Duration::from_millis(100);

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL a node; healed by starting it again.
    Kill,
    /// SIGSTOP a node; healed by SIGCONT.
    Pause,
    /// Cut a node off from its peers; healed by reconnecting it.
    Partition,
    /// Slow a node's links; healed by removing the delay.
    Latency,
    /// Graceful restart (SIGTERM, then start); nothing to heal.
    Restart,
    /// Load a node's machine resources; healed by stopping the stress.
    Stress,
}

impl FaultKind {
    /// Every kind, in CLI order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Latency,
        FaultKind::Restart,
        FaultKind::Stress,
    ];

    /// The CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Latency => "latency",
            FaultKind::Restart => "restart",
            FaultKind::Stress => "stress",
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a fault kind; use {}",
                    FaultKind::ALL.map(FaultKind::as_str).join(", ")
                )
            })
    }
}

/// One fault of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFault {
    /// Start, in ms after the run starts.
    pub at_ms: u64,
    /// What.
    pub kind: FaultKind,
    /// Which node (0-based index).
    pub node: usize,
    /// How long before it is healed (0 for a restart).
    pub hold_ms: u64,
}

/// splitmix64: a tiny, well-mixed seeded generator, written out so the
/// schedule of a seed never changes with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (modulo bias is irrelevant at these ranges).
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo).saturating_add(1)).max(1)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // usize fits in u64 on every supported target; the result < n.
        (self.next() % n as u64) as usize
    }
}

/// The fault schedule of a seed: faults drawn from `kinds` at random
/// gaps, each on a random node, never more than `max_broken` nodes faulty
/// at once (a node is never hit twice at once either). The same inputs
/// always give the same schedule. Empty if `kinds` is empty or
/// `max_broken` is 0.
pub fn schedule(
    seed: u64,
    nodes: usize,
    duration: Duration,
    kinds: &[FaultKind],
    max_broken: usize,
) -> Vec<PlannedFault> {
    let mut rng = SplitMix64(seed);
    let end = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let mut plan: Vec<PlannedFault> = Vec::new();
    if kinds.is_empty() || max_broken == 0 || nodes == 0 {
        return plan;
    }
    let busy_until = |f: &PlannedFault| {
        f.at_ms
            + if f.kind == FaultKind::Restart {
                RESTART_COST_MS
            } else {
                f.hold_ms
            }
    };
    let mut t = WARMUP_MS;
    loop {
        t += rng.between(GAP_MS);
        if t >= end {
            break;
        }
        let kind = kinds[rng.below(kinds.len())];
        let hold = if kind == FaultKind::Restart {
            0
        } else {
            rng.between(HOLD_MS)
        };
        let cost = if kind == FaultKind::Restart {
            RESTART_COST_MS
        } else {
            hold
        };
        // Faults whose broken interval overlaps this one's.
        let overlapping: Vec<&PlannedFault> = plan
            .iter()
            .filter(|f| f.at_ms < t + cost && t < busy_until(f))
            .collect();
        let mut broken: Vec<usize> = overlapping.iter().map(|f| f.node).collect();
        broken.sort_unstable();
        broken.dedup();
        // `min(nodes)`: a bound above the node count must not leave no
        // candidate to draw from.
        if broken.len() >= max_broken.min(nodes) {
            // Wait for the first of them to heal; the next draw starts there.
            if let Some(first_heal) = overlapping.iter().map(|f| busy_until(f)).min() {
                t = t.max(first_heal);
            }
            continue;
        }
        let candidates: Vec<usize> = (0..nodes).filter(|n| !broken.contains(n)).collect();
        let node = candidates[rng.below(candidates.len())];
        plan.push(PlannedFault {
            at_ms: t,
            kind,
            node,
            hold_ms: hold,
        });
    }
    plan
}

/// What a chaos run does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// How long faults and load run.
    pub duration: Duration,
    /// Fault kinds to draw from.
    pub faults: Vec<FaultKind>,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Most nodes faulty at once; `None`: a minority, `(n - 1) / 2`.
    pub max_broken: Option<usize>,
    /// Concurrent submitters.
    pub workers: usize,
    /// Stop submitting after this many submissions (`None`: only time).
    pub max_submissions: Option<usize>,
    /// Time for the nodes to converge after everything is healed.
    pub converge_timeout: Duration,
}

impl ChaosOptions {
    /// Kill, pause and restart for `duration` with `seed`, 4 workers.
    pub fn new(duration: Duration, seed: u64) -> Self {
        ChaosOptions {
            duration,
            faults: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Restart],
            seed,
            max_broken: None,
            workers: 4,
            max_submissions: None,
            converge_timeout: Duration::from_secs(120),
        }
    }
}

/// One fault as it was injected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// What.
    pub kind: FaultKind,
    /// Which node, by name (`node-2`).
    pub node: String,
    /// When the schedule said, ms after the start.
    pub planned_at_ms: u64,
    /// When it was applied, ms after the start.
    pub applied_at_ms: u64,
    /// When it was healed, ms after the start (`None` for a restart, or
    /// when healing failed).
    pub healed_at_ms: Option<u64>,
    /// Why applying or healing failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a chaos run; serializes to the `--json` object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChaosReport {
    /// `pass` when the checker found nothing, every fault was applied and
    /// healed, and the load committed something.
    pub verdict: Verdict,
    /// The schedule's seed.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Length of the fault and load phase, in seconds.
    pub duration_s: f64,
    /// Distinct acknowledged attestations.
    pub acknowledged: usize,
    /// Acknowledged attestations missing or moved on some node.
    pub lost: usize,
    /// Heights at which nodes disagree.
    pub divergent_heights: usize,
    /// Attestation ids stored twice.
    pub duplicates: usize,
    /// Finality certificates that do not verify.
    pub invalid_certificates: usize,
    /// Faults injected.
    pub faults: usize,
    /// Each fault as injected.
    pub fault_log: Vec<FaultEvent>,
    /// Submissions attempted (each with the client's retries).
    pub submissions: usize,
    /// Submissions that ended in an error, by error name.
    pub failed: BTreeMap<String, usize>,
    /// Read answers recorded (and re-checked at the end).
    pub reads: usize,
    /// Longest time without a successful commit during the load, in ms
    /// (from the load's start to the first ack, between acks, and from the
    /// last ack to the load's end).
    pub longest_unavailability_ms: u64,
    /// Highest committed head height among the nodes when checked.
    pub final_height: u64,
    /// Problems of the run itself (a node that would not restart, no
    /// convergence, no load committed).
    pub errors: Vec<String>,
    /// The checker's full report.
    pub check: CheckReport,
}

impl ChaosReport {
    /// True when the run passed.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "chaos: {} — seed {}, {} nodes, {:.0} s\n  acknowledged {}, lost {}, divergent heights {}, \
             duplicates {}, certificates verified {} ({} invalid)\n  faults injected {}, submissions {} ({} failed), \
             reads re-checked {}, longest unavailability {} ms, final height {}\n",
            match self.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
            },
            self.seed,
            self.nodes,
            self.duration_s,
            self.acknowledged,
            self.lost,
            self.divergent_heights,
            self.duplicates,
            self.check.certificates_checked,
            self.invalid_certificates,
            self.faults,
            self.submissions,
            self.failed.values().sum::<usize>(),
            self.reads,
            self.longest_unavailability_ms,
            self.final_height,
        );
        for f in &self.fault_log {
            s += &format!(
                "  {:>7} ms {:<9} {}{}\n",
                f.applied_at_ms,
                f.kind.as_str(),
                f.node,
                f.error
                    .as_deref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            );
        }
        for e in &self.errors {
            s += &format!("  error: {e}\n");
        }
        for v in self.check.violations.iter().take(20) {
            s += &format!(
                "  violation {}{}{}{}: {}\n",
                v.kind,
                v.node
                    .as_deref()
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default(),
                v.height
                    .map(|h| format!(" at height {h}"))
                    .unwrap_or_default(),
                v.id.as_deref()
                    .map(|i| format!(" id {i}"))
                    .unwrap_or_default(),
                v.detail
            );
        }
        if self.check.violations.len() > 20 {
            s += &format!("  … {} more violations\n", self.check.violations.len() - 20);
        }
        s
    }
}

/// What the load workers record.
#[derive(Default)]
struct Record {
    history: History,
    /// When each acknowledgement arrived, ms after the start.
    ack_times: Vec<u64>,
    failed: BTreeMap<String, usize>,
}

/// Runs the chaos schedule of `opts` against `cluster` with load, heals
/// everything, waits for convergence and checks the cluster.
///
/// Errors only when the run cannot start (no client, no attester key);
/// everything that goes wrong during the run is in the report.
/// Call it from the thread that owns the cluster (see the module header).
pub fn run_chaos(cluster: &Cluster, opts: &ChaosOptions) -> Result<ChaosReport> {
    let nodes = cluster.validators();
    let max_broken = opts.max_broken.unwrap_or(nodes.saturating_sub(1) / 2);
    let plan = schedule(opts.seed, nodes, opts.duration, &opts.faults, max_broken);
    let urls: Vec<String> = (0..nodes).map(|i| cluster.rpc_url(i)).collect();
    // Short attempts so a paused node costs a few seconds, many attempts
    // so a submission survives a leader change; resubmitting is safe.
    let policy = Policy {
        max_attempts: 40,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(1),
        deadline: Duration::from_secs(45),
        request_timeout: Duration::from_secs(8),
        connect_timeout: Duration::from_secs(1),
        breaker_threshold: 3,
        breaker_cool_down: Duration::from_secs(1),
    };
    let client = Client::new(urls, policy).map_err(|e| TestnetError::InvalidSpec(e.to_string()))?;
    let key = crate::attest::new_attester()?;

    let start = Instant::now();
    let ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let stop = AtomicBool::new(false);
    let submitted = AtomicUsize::new(0);
    let record = Mutex::new(Record::default());
    let mut log: Vec<FaultEvent> = Vec::new();
    let mut errors: Vec<String> = Vec::new();

    let load_end_ms = std::thread::scope(|scope| {
        for w in 0..opts.workers.max(1) {
            let writer = client.fork(w);
            let reader = client.fork(w + 1);
            let (stop, submitted, record, key) = (&stop, &submitted, &record, &key);
            scope.spawn(move || {
                load_worker(
                    cluster,
                    &writer,
                    &reader,
                    key,
                    stop,
                    submitted,
                    opts.max_submissions,
                    record,
                    &ms,
                )
            });
        }
        // Faults on this thread (it owns the node processes).
        let mut active: Vec<Active> = Vec::new();
        let mut actions: Vec<(u64, bool, usize)> = Vec::new();
        for (i, f) in plan.iter().enumerate() {
            actions.push((f.at_ms, true, i));
            if f.kind != FaultKind::Restart {
                actions.push((f.at_ms + f.hold_ms, false, i));
            }
        }
        // Heals before applies at the same instant, then schedule order.
        actions.sort_by_key(|&(t, apply, i)| (t, apply, i));
        let end_ms = u64::try_from(opts.duration.as_millis()).unwrap_or(u64::MAX);
        for (t, apply, i) in actions {
            if t >= end_ms {
                break;
            }
            let now = ms();
            if t > now {
                std::thread::sleep(Duration::from_millis(t - now));
            }
            let f = &plan[i];
            if apply {
                let applied_at_ms = ms();
                let result = apply_fault(cluster, f);
                let (held, error) = match result {
                    Ok(held) => (Some(held), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                log.push(FaultEvent {
                    kind: f.kind,
                    node: cluster.node_name(f.node),
                    planned_at_ms: f.at_ms,
                    applied_at_ms,
                    healed_at_ms: None,
                    error,
                });
                if let (Some(held), true) = (held, f.kind != FaultKind::Restart) {
                    active.push(Active {
                        entry: log.len() - 1,
                        fault: f.clone(),
                        held,
                    });
                }
            } else if let Some(pos) = active.iter().position(|a| a.fault == *f) {
                let done = active.remove(pos);
                heal_into(cluster, done, &active, &mut log, &ms);
            }
        }
        let now = ms();
        if end_ms > now {
            std::thread::sleep(Duration::from_millis(end_ms - now));
        }
        // Heal what is still broken, then let the load drain.
        while !active.is_empty() {
            let done = active.remove(0);
            heal_into(cluster, done, &active, &mut log, &ms);
        }
        // Belt and braces: nothing stays frozen or cut off.
        cluster.heal();
        for i in 0..cluster.len() {
            if cluster.is_paused(i) {
                if let Err(e) = cluster.unpause(i) {
                    errors.push(format!("unpause {}: {e}", cluster.node_name(i)));
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        ms()
    });

    // Every validator runs again (a failed heal is retried once here).
    for i in 0..nodes {
        if !cluster.is_running(i) {
            if let Err(e) = cluster.restart(i) {
                errors.push(format!("{} did not start again: {e}", cluster.node_name(i)));
            }
        }
    }
    if let Err(e) = cluster.wait_converged(opts.converge_timeout) {
        errors.push(format!("no convergence after healing: {e}"));
    }
    let record = record.into_inner().unwrap_or_else(|p| p.into_inner());
    let check = check_cluster(cluster, &record.history);
    let final_height = check.heads.values().copied().max().unwrap_or(0);
    for f in &log {
        if let Some(e) = &f.error {
            errors.push(format!("{} on {}: {e}", f.kind.as_str(), f.node));
        }
    }
    if check.acknowledged == 0 {
        errors.push("no submission was acknowledged: the load never committed".into());
    }
    let verdict = if check.passed() && errors.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Ok(ChaosReport {
        verdict,
        seed: opts.seed,
        nodes,
        duration_s: opts.duration.as_secs_f64(),
        acknowledged: check.acknowledged,
        lost: check.lost,
        divergent_heights: check.divergent_heights,
        duplicates: check.duplicates,
        invalid_certificates: check.invalid_certificates,
        faults: log.len(),
        fault_log: log,
        submissions: submitted.load(Ordering::SeqCst),
        failed: record.failed,
        reads: check.reads_checked,
        longest_unavailability_ms: longest_gap(record.ack_times, load_end_ms),
        final_height,
        errors,
        check,
    })
}

/// Submits until `stop`, recording each acknowledgement and, after each,
/// a read of an earlier acknowledged id (through another node when the
/// workers' clients are spread) whose answer is checked at the end.
#[allow(clippy::too_many_arguments)]
fn load_worker(
    cluster: &Cluster,
    writer: &Client,
    reader: &Client,
    key: &crate::SigningKey,
    stop: &AtomicBool,
    submitted: &AtomicUsize,
    max_submissions: Option<usize>,
    record: &Mutex<Record>,
    ms: &dyn Fn() -> u64,
) {
    let lock = || record.lock().unwrap_or_else(|p| p.into_inner());
    let mut mine: Vec<String> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let n = submitted.fetch_add(1, Ordering::SeqCst);
        if max_submissions.is_some_and(|max| n >= max) {
            submitted.fetch_sub(1, Ordering::SeqCst);
            break;
        }
        let att = cluster.make_attestation(key, 9_750, "chaos", crate::attest::now_ms());
        let Ok(att) = att else {
            *lock().failed.entry("SIGN".into()).or_default() += 1;
            std::thread::sleep(WORKER_BACKOFF);
            continue;
        };
        let id = cluster.attestation_id(&att).unwrap_or_default();
        match writer.submit_json(&att, Wait::Committed) {
            Ok(reply) => match Location::from_answer(&id, &reply.value.raw) {
                Some(loc) => {
                    let mut r = lock();
                    r.ack_times.push(ms());
                    r.history.acknowledged.push(loc);
                    drop(r);
                    mine.push(id);
                }
                // Pending: the node's commit wait ran out; not a promise.
                None => *lock().failed.entry("PENDING".into()).or_default() += 1,
            },
            Err(f) => {
                *lock().failed.entry(f.error.name().to_string()).or_default() += 1;
                std::thread::sleep(WORKER_BACKOFF);
                continue;
            }
        }
        // A read of an earlier ack: a stride through this worker's ids.
        if let Some(read_id) = mine.get(n % mine.len().max(1)).cloned() {
            if let Ok(reply) = reader.get_attestation(&read_id) {
                if let Some(loc) = Location::from_answer(&read_id, &reply.value) {
                    lock().history.reads.push(loc);
                }
            }
        }
    }
}

/// Longest stretch without an acknowledgement between the load's start
/// (0), each ack, and the load's end.
fn longest_gap(mut times: Vec<u64>, end: u64) -> u64 {
    times.sort_unstable();
    let mut prev = 0;
    let mut longest = 0;
    for t in times.into_iter().chain(std::iter::once(end)) {
        longest = longest.max(t.saturating_sub(prev));
        prev = prev.max(t);
    }
    longest
}

/// A fault in force and what healing it needs.
struct Active {
    /// Its entry in the fault log.
    entry: usize,
    fault: PlannedFault,
    held: Held,
}

/// State a fault keeps until it is healed.
enum Held {
    /// Healing needs nothing kept (kill, pause, partition).
    Nothing,
    /// The stress threads; dropping the handle ends them.
    Stress(Stress),
    /// Each changed link `(from, to)` and its delay before the fault.
    Delays(Vec<(usize, usize, Duration)>),
}

/// The other nodes (spares included: a partition must cut them too).
fn others(cluster: &Cluster, node: usize) -> Vec<usize> {
    (0..cluster.len()).filter(|&j| j != node).collect()
}

fn apply_fault(cluster: &Cluster, f: &PlannedFault) -> Result<Held> {
    let n = f.node;
    match f.kind {
        FaultKind::Kill => cluster.kill(n).map(|()| Held::Nothing),
        FaultKind::Restart => cluster.restart(n).map(|()| Held::Nothing),
        FaultKind::Pause => cluster.pause(n).map(|()| Held::Nothing),
        FaultKind::Partition => cluster
            .partition(&[n], &others(cluster, n))
            .map(|()| Held::Nothing),
        FaultKind::Latency => {
            cluster.require_proxy("latency")?;
            let mut saved = Vec::new();
            for j in others(cluster, n) {
                for (a, b) in [(n, j), (j, n)] {
                    let Some(link) = cluster.link(a, b) else {
                        continue;
                    };
                    let before = link.delay();
                    if let Err(e) = link.set_delay((before + LATENCY_ONE_WAY).min(MAX_DELAY)) {
                        // The first error is the one worth reporting; a
                        // failed restore would fail the same way.
                        let _ = restore_delays(cluster, &saved);
                        return Err(e);
                    }
                    saved.push((a, b, before));
                }
            }
            Ok(Held::Delays(saved))
        }
        FaultKind::Stress => {
            // Ends on its own shortly after its planned heal, should the
            // run be cut short before healing.
            let limit =
                (Duration::from_millis(f.hold_ms) + Duration::from_secs(10)).min(MAX_STRESS);
            cluster.stress(n, STRESS_THREADS, limit).map(Held::Stress)
        }
    }
}

fn restore_delays(cluster: &Cluster, saved: &[(usize, usize, Duration)]) -> Result<()> {
    let mut first_error = Ok(());
    for &(a, b, delay) in saved {
        if let Some(link) = cluster.link(a, b) {
            if let Err(e) = link.set_delay(delay) {
                if first_error.is_ok() {
                    first_error = Err(e);
                }
            }
        }
    }
    first_error
}

/// Undoes one fault. A partition is undone with [`Cluster::heal`], which
/// removes every partition, so the partitions still in force in `rest`
/// are put back.
fn heal_fault(cluster: &Cluster, done: Active, rest: &[Active]) -> Result<()> {
    let n = done.fault.node;
    match (done.fault.kind, done.held) {
        (FaultKind::Kill, _) => cluster.restart(n),
        (FaultKind::Pause, _) => cluster.unpause(n),
        (FaultKind::Partition, _) => {
            cluster.heal();
            rest.iter()
                .filter(|a| a.fault.kind == FaultKind::Partition)
                .try_for_each(|a| {
                    cluster.partition(&[a.fault.node], &others(cluster, a.fault.node))
                })
        }
        (_, Held::Delays(saved)) => restore_delays(cluster, &saved),
        (_, Held::Stress(stress)) => {
            stress.stop();
            Ok(())
        }
        (FaultKind::Restart | FaultKind::Latency | FaultKind::Stress, Held::Nothing) => Ok(()),
    }
}

/// Heals `done` and records when the heal completed (a restart takes a
/// while), or the error, in its log entry.
fn heal_into(
    cluster: &Cluster,
    done: Active,
    rest: &[Active],
    log: &mut [FaultEvent],
    ms: &dyn Fn() -> u64,
) {
    let entry = done.entry;
    let result = heal_fault(cluster, done, rest);
    let Some(event) = log.get_mut(entry) else {
        return;
    };
    match result {
        Ok(()) => event.healed_at_ms = Some(ms()),
        Err(e) => {
            let text = format!("heal: {e}");
            event.error = Some(match event.error.take() {
                Some(prev) => format!("{prev}; {text}"),
                None => text,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Restart];

    #[test]
    fn chaos_same_seed_same_schedule() {
        let a = schedule(42, 3, Duration::from_secs(60), &KINDS, 1);
        let b = schedule(42, 3, Duration::from_secs(60), &KINDS, 1);
        assert_eq!(a, b);
        assert!(a.len() >= 5, "{a:?}");
        let c = schedule(43, 3, Duration::from_secs(60), &KINDS, 1);
        assert_ne!(a, c);
        // Pinned: a seed's schedule must not change between versions, or
        // a failing seed could not be replayed.
        let first = &a[0];
        assert_eq!(
            (first.at_ms, first.kind, first.node, first.hold_ms),
            (4_312, FaultKind::Pause, 0, 2_128)
        );
    }

    #[test]
    fn chaos_schedule_keeps_to_the_minority() {
        for seed in 0..200 {
            for (nodes, max) in [(3, 1), (5, 2), (7, 3)] {
                let plan = schedule(seed, nodes, Duration::from_secs(120), &FaultKind::ALL, max);
                let busy = |f: &PlannedFault| {
                    f.at_ms
                        + if f.kind == FaultKind::Restart {
                            RESTART_COST_MS
                        } else {
                            f.hold_ms
                        }
                };
                for f in &plan {
                    assert!(f.node < nodes);
                    let mut at_once: Vec<usize> = plan
                        .iter()
                        .filter(|g| g.at_ms <= f.at_ms && f.at_ms < busy(g))
                        .map(|g| g.node)
                        .collect();
                    let total = at_once.len();
                    at_once.sort_unstable();
                    at_once.dedup();
                    assert_eq!(total, at_once.len(), "a node hit twice at once: {plan:?}");
                    assert!(at_once.len() <= max, "seed {seed}: {plan:?}");
                }
            }
        }
    }

    #[test]
    fn chaos_schedule_without_room_is_empty() {
        assert!(schedule(1, 2, Duration::from_secs(60), &KINDS, 0).is_empty());
        // A bound above the node count breaks every node at most.
        let all = schedule(1, 3, Duration::from_secs(60), &KINDS, 10);
        assert!(!all.is_empty() && all.iter().all(|f| f.node < 3));
        assert!(schedule(1, 3, Duration::from_secs(60), &[], 1).is_empty());
    }

    #[test]
    fn chaos_fault_kinds_parse() {
        for k in FaultKind::ALL {
            assert_eq!(k.as_str().parse::<FaultKind>(), Ok(k));
        }
        assert!("reboot".parse::<FaultKind>().is_err());
    }

    #[test]
    fn chaos_longest_gap_counts_start_and_end() {
        assert_eq!(longest_gap(vec![], 5_000), 5_000);
        assert_eq!(longest_gap(vec![300, 100, 2_000], 2_500), 1_700);
        assert_eq!(longest_gap(vec![100, 200], 4_000), 3_800);
    }
}
