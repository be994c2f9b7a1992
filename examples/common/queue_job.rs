//! What the queue examples share: the payload format, the work done for a
//! job (a hash), and the append-only results file.
//!
//! Included with `#[path]` by `beanstalk_worker`, `redis_worker`, their
//! producers and the integration tests (which recompute every hash), so
//! there is one definition of a job.
//!
//! A payload is `<id> <kind> <filler>` in ASCII: `id` is unique per job
//! (the producer numbers them), `kind` says how the job behaves, and the
//! filler pads it to the requested size. A worker hashes the whole payload
//! with 64-bit FNV-1a and appends `job_id<TAB>payload_id<TAB>hash` to a
//! file of its own, so a test can check that every job was done, and how
//! many times.

#![allow(dead_code)] // each includer uses a different part

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How a job behaves when a worker takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Done on the first attempt.
    Ok,
    /// Fails with a transient error on its first attempt (the worker
    /// releases it with a delay), succeeds on the next.
    Flaky,
    /// Fails with a permanent error on every attempt (the worker buries it
    /// or moves it to a dead-letter list).
    Poison,
}

impl Kind {
    /// The word in the payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Flaky => "flaky",
            Kind::Poison => "poison",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "ok" => Ok(Kind::Ok),
            "flaky" => Ok(Kind::Flaky),
            "poison" => Ok(Kind::Poison),
            _ => Err(format!("unknown job kind {s:?} (expected ok, flaky or poison)")),
        }
    }
}

/// The default payload size in bytes.
pub const DEFAULT_SIZE: usize = 64;

/// The payload of job `id`: `<id> <kind> <filler>`, padded with a filler
/// derived from the id to at least `size` bytes.
pub fn payload(id: u64, kind: Kind, size: usize) -> Vec<u8> {
    let mut p = format!("{id} {} ", kind.as_str()).into_bytes();
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while p.len() < size {
        // xorshift: cheap, deterministic filler.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(b'a' + (x % 26) as u8);
    }
    p
}

/// A parsed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// The producer's id of the job.
    pub id: u64,
    /// How it behaves.
    pub kind: Kind,
}

/// Parses `<id> <kind> ...`; `None` for anything else (a permanent error).
pub fn parse(body: &[u8]) -> Option<Payload> {
    let text = std::str::from_utf8(body).ok()?;
    let mut words = text.splitn(3, ' ');
    let id = words.next()?.parse().ok()?;
    let kind = words.next()?.parse().ok()?;
    Some(Payload { id, kind })
}

/// The work: 64-bit FNV-1a of the payload.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One result line: `job_id<TAB>payload_id<TAB>hash` (hash in hex).
pub fn result_line(job_id: u64, payload_id: u64, hash: u64) -> String {
    format!("{job_id}\t{payload_id}\t{hash:016x}\n")
}

/// Parses a result line (without its newline) into (job id, payload id,
/// hash); a fourth field, the build id of the worker that wrote it (see
/// [`Results::tagged`]), is allowed.
pub fn parse_result_line(line: &str) -> Option<(u64, u64, u64)> {
    let mut f = line.split('\t');
    let job = f.next()?.parse().ok()?;
    let payload = f.next()?.parse().ok()?;
    let hash = u64::from_str_radix(f.next()?, 16).ok()?;
    let _build = f.next();
    f.next().is_none().then_some((job, payload, hash))
}

/// The build id a result line was tagged with, if any.
pub fn result_build(line: &str) -> Option<&str> {
    line.split('\t').nth(3)
}

/// The results file of one worker process: `<dir>/<pid>.tsv`, opened with
/// `O_APPEND`; each line is one `write`, so a line is either wholly there
/// or not at all, even if the process is killed.
pub struct Results {
    file: File,
    path: PathBuf,
    /// A build id appended to each line (the upgrade tests).
    tag: Option<String>,
}

impl Results {
    /// Creates `dir` if needed and opens this process's file in it.
    pub fn open(dir: &Path) -> io::Result<Results> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{}.tsv", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        Ok(Results {
            file,
            path,
            tag: None,
        })
    }

    /// Appends `build` to every line as a fourth field: which binary did
    /// the job (the upgrade tests read it).
    pub fn tagged(mut self, build: String) -> Results {
        self.tag = Some(build);
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one result line with a single `write`.
    pub fn record(&mut self, job_id: u64, payload_id: u64, hash: u64) -> io::Result<()> {
        let mut line = result_line(job_id, payload_id, hash);
        if let Some(t) = &self.tag {
            line.pop();
            line.push('\t');
            line.push_str(t);
            line.push('\n');
        }
        let n = self.file.write(line.as_bytes())?;
        if n == line.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to {}", self.path.display()),
            ))
        }
    }
}

/// The command line of a bare run: `NAME -c FILE --bare DURATION` (the
/// benchmark's baseline: the consumer loop alone, without rookery).
#[derive(Debug, clap::Parser)]
struct BareArgs {
    /// The daemon's config file: its `[app]` table is read.
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// How long to consume.
    #[arg(long, value_parser = humantime::parse_duration)]
    bare: std::time::Duration,
}

/// `Some((config, run_for))` when the command line is a bare run's, else
/// `None` (the daemon's own command line, for rookery to parse).
pub fn bare_args() -> Option<(Option<PathBuf>, std::time::Duration)> {
    use clap::Parser;
    let args = BareArgs::try_parse().ok()?;
    Some((args.config, args.bare))
}

/// What a bare consumer loop (no rookery) did, printed for the benchmark
/// as `jobs=N seconds=S jobs_per_sec=R`, where `seconds` runs from the
/// start to the end of the last job (an idle tail, once the queue ran
/// dry, is not counted).
pub fn bare_report(jobs: u64, elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { jobs as f64 / secs } else { 0.0 };
    format!("jobs={jobs} seconds={secs:.3} jobs_per_sec={rate:.1}")
}

/// `--bare`, the benchmark's baseline: the consumer loop alone in this
/// process, without rookery. Reads the `[app]` settings `S` of the config,
/// `connect`s, calls `one` (take and handle at most one job; true if it
/// did one) until `run_for` has passed, `finish`es, and prints
/// [`bare_report`]. Returns the process's exit code.
pub fn run_bare<S: serde::de::DeserializeOwned, C>(
    name: &str,
    config: Option<&Path>,
    run_for: std::time::Duration,
    connect: impl FnOnce(&S) -> Result<C, rookery::BoxError>,
    mut one: impl FnMut(&mut C) -> Result<bool, rookery::BoxError>,
    finish: impl FnOnce(C) -> Result<(), rookery::BoxError>,
) -> std::process::ExitCode {
    let settings = rookery::Config::read(name, config).and_then(|c| c.app::<S>());
    let result = settings.map_err(rookery::BoxError::from).and_then(|s| {
        let mut consumer = connect(&s)?;
        let start = std::time::Instant::now();
        let (mut jobs, mut busy) = (0u64, std::time::Duration::ZERO);
        while start.elapsed() < run_for {
            if one(&mut consumer)? {
                jobs += 1;
                busy = start.elapsed();
            }
        }
        finish(consumer)?;
        Ok(bare_report(jobs, busy))
    });
    match result {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {}", rookery::error_chain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}
