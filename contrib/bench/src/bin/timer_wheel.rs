//! The core's timer wheel against the binary heap with lazy deletion it replaced (issue 11).
//!
//! 100,000 allocations, each with one deadline between 1 s and 3600 s (the longest
//! lifetime), go through what a relay does to them: scheduled when created, rescheduled
//! once (a Refresh), half of them cancelled (deleted by their client), and the rest fired as
//! time passes second by second. Each phase is timed separately; the figure is the median
//! over a few runs of nanoseconds per operation.
//!
//! The heap is the old design, kept here as the reference: a `BinaryHeap` of (deadline,
//! owner) entries. Rescheduling pushes a second entry and cancelling pushes nothing; the
//! owner remembers its current deadline and a popped entry that does not match it is stale
//! and dropped. So the heap holds an entry per schedule until its deadline, and firing pays
//! for popping the stale ones; "fire" is per live entry fired, stale pops included.
//!
//! Usage: timer_wheel [--allocations N] [--runs R]   (release build: `cargo run --release
//! --bin timer_wheel` in contrib/bench)

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use relay::core::{AllocationId, Due, TimerHandle, Timers};

const LONGEST: Duration = Duration::from_secs(3600);

/// Nanoseconds per operation of each phase, one run.
#[derive(Clone, Copy, Default)]
struct Phases {
    schedule: f64,
    reschedule: f64,
    cancel: f64,
    fire: f64,
    /// Entries held after the reschedules.
    peak_entries: usize,
}

/// The operations both designs support, as a relay uses them.
trait Deadlines {
    fn new(n: usize) -> Self;
    fn schedule(&mut self, now: Instant, i: usize, at: Instant);
    fn reschedule(&mut self, i: usize, at: Instant);
    fn cancel(&mut self, i: usize);
    /// Fires everything due at `now`; returns how many live entries fired.
    fn fire(&mut self, now: Instant) -> usize;
    fn entries(&self) -> usize;
}

struct Wheel {
    timers: Timers,
    handles: Vec<Option<TimerHandle>>,
}

fn due(i: usize) -> Due {
    Due::Allocation(AllocationId {
        slot: i,
        generation: 0,
    })
}

impl Deadlines for Wheel {
    fn new(n: usize) -> Self {
        Wheel {
            timers: Timers::default(),
            handles: vec![None; n],
        }
    }

    fn schedule(&mut self, now: Instant, i: usize, at: Instant) {
        self.handles[i] = Some(self.timers.schedule(now, at, due(i)));
    }

    fn reschedule(&mut self, i: usize, at: Instant) {
        if let Some(handle) = self.handles[i] {
            self.timers.reschedule(handle, at);
        }
    }

    fn cancel(&mut self, i: usize) {
        if let Some(handle) = self.handles[i].take() {
            self.timers.cancel(handle, due(i));
        }
    }

    fn fire(&mut self, now: Instant) -> usize {
        let mut fired = 0;
        while let Some(due) = self.timers.pop_due(now) {
            black_box(due);
            fired += 1;
        }
        fired
    }

    fn entries(&self) -> usize {
        self.timers.len()
    }
}

/// The old design: a min-heap with lazy deletion.
struct Heap {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Each owner's current deadline; `None` once cancelled.
    scheduled: Vec<Option<Instant>>,
}

impl Deadlines for Heap {
    fn new(n: usize) -> Self {
        Heap {
            heap: BinaryHeap::new(),
            scheduled: vec![None; n],
        }
    }

    fn schedule(&mut self, _now: Instant, i: usize, at: Instant) {
        self.scheduled[i] = Some(at);
        self.heap.push(Reverse((at, i)));
    }

    fn reschedule(&mut self, i: usize, at: Instant) {
        self.schedule(at, i, at);
    }

    fn cancel(&mut self, i: usize) {
        self.scheduled[i] = None;
    }

    fn fire(&mut self, now: Instant) -> usize {
        let mut fired = 0;
        while let Some(Reverse((at, i))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.scheduled[i] == Some(at) {
                self.scheduled[i] = None;
                black_box(i);
                fired += 1;
            }
        }
        fired
    }

    fn entries(&self) -> usize {
        self.heap.len()
    }
}

/// Deterministic deadlines in (0, LONGEST], millisecond resolution (xorshift64).
struct Deadline(u64);

impl Deadline {
    fn next(&mut self, t0: Instant) -> Instant {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let millis = LONGEST.as_millis() as u64;
        t0 + Duration::from_millis(1 + self.0 % millis)
    }
}

fn per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops.max(1) as f64
}

fn run<D: Deadlines>(n: usize, seed: u64) -> Phases {
    let t0 = Instant::now();
    let mut deadlines = Deadline(seed);
    let first: Vec<Instant> = (0..n).map(|_| deadlines.next(t0)).collect();
    let second: Vec<Instant> = (0..n).map(|_| deadlines.next(t0)).collect();
    let mut d = D::new(n);

    let start = Instant::now();
    for (i, at) in first.iter().enumerate() {
        d.schedule(t0, i, *at);
    }
    let schedule = per_op(start, n);

    let start = Instant::now();
    for (i, at) in second.iter().enumerate() {
        d.reschedule(i, *at);
    }
    let reschedule = per_op(start, n);
    let peak_entries = d.entries();

    let start = Instant::now();
    for i in (0..n).step_by(2) {
        d.cancel(i);
    }
    let cancel = per_op(start, n.div_ceil(2));

    let start = Instant::now();
    let mut fired = 0;
    for second in 0..=LONGEST.as_secs() + 1 {
        fired += d.fire(t0 + Duration::from_secs(second));
    }
    let fire = per_op(start, fired);
    assert_eq!(fired, n / 2, "every live entry fires once");
    assert_eq!(d.entries(), 0, "nothing left after the longest deadline");

    Phases {
        schedule,
        reschedule,
        cancel,
        fire,
        peak_entries,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn medians(runs: &[Phases]) -> Phases {
    let of = |f: fn(&Phases) -> f64| median(runs.iter().map(f).collect());
    Phases {
        schedule: of(|p| p.schedule),
        reschedule: of(|p| p.reschedule),
        cancel: of(|p| p.cancel),
        fire: of(|p| p.fire),
        peak_entries: runs.iter().map(|p| p.peak_entries).max().unwrap_or(0),
    }
}

fn main() {
    let mut n = 100_000;
    let mut runs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--allocations", Some(v)) => n = v,
            ("--runs", Some(v)) => runs = v,
            _ => {
                eprintln!("usage: timer_wheel [--allocations N] [--runs R]");
                std::process::exit(2);
            }
        }
    }
    // A warm-up run of each, not counted.
    run::<Wheel>(n, 1);
    run::<Heap>(n, 1);
    let mut wheel = Vec::new();
    let mut heap = Vec::new();
    for r in 0..runs.max(1) {
        let seed = 0x9E37_79B9_7F4A_7C15 ^ r as u64;
        wheel.push(run::<Wheel>(n, seed));
        heap.push(run::<Heap>(n, seed));
    }
    println!(
        "timer: {n} allocations, deadlines 1 ms..{} s; ns/op, median of {} runs",
        LONGEST.as_secs(),
        wheel.len()
    );
    println!(
        "{:<28} {:>9} {:>11} {:>8} {:>8} {:>14}",
        "", "schedule", "reschedule", "cancel", "fire", "peak entries"
    );
    for (name, p) in [
        ("wheel (1 s ticks, 4096)", medians(&wheel)),
        ("heap, lazy deletion (old)", medians(&heap)),
    ] {
        println!(
            "{name:<28} {:>9.1} {:>11.1} {:>8.1} {:>8.1} {:>14}",
            p.schedule, p.reschedule, p.cancel, p.fire, p.peak_entries
        );
    }
}
