//! Pushes numbered jobs onto a Redis list, for `redis_worker`.
//!
//! ```text
//! redis_producer --url redis://127.0.0.1:6379/ --queue jobs --jobs 1000
//! ```
//!
//! Payload ids run from `--first-id` to `--first-id + --jobs - 1`; each
//! payload is `<id> <kind> <filler>` (see `common/queue_job.rs`). Jobs are
//! `LPUSH`ed (workers take from the right: first in, first out) in
//! pipelines of 1000.

use std::process::ExitCode;

use clap::Parser;

#[path = "common/queue_job.rs"]
mod queue_job;

/// Push numbered jobs onto a Redis list.
#[derive(Debug, Parser)]
struct Cli {
    /// The server.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    url: String,
    /// The list to push onto.
    #[arg(long, default_value = "jobs")]
    queue: String,
    /// How many jobs.
    #[arg(long)]
    jobs: u64,
    /// The payload id of the first job.
    #[arg(long, default_value_t = 0)]
    first_id: u64,
    /// How the jobs behave: ok, flaky (fails once) or poison (always fails).
    #[arg(long, default_value = "ok")]
    kind: queue_job::Kind,
    /// Payload size in bytes.
    #[arg(long, default_value_t = queue_job::DEFAULT_SIZE)]
    size: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> redis::RedisResult<()> {
        let mut con = redis::Client::open(cli.url.as_str())?.get_connection()?;
        let ids: Vec<u64> = (cli.first_id..cli.first_id + cli.jobs).collect();
        for batch in ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for id in batch {
                pipe.cmd("LPUSH")
                    .arg(&cli.queue)
                    .arg(queue_job::payload(*id, cli.kind, cli.size))
                    .ignore();
            }
            pipe.query::<()>(&mut con)?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => {
            println!("pushed {} jobs onto {:?} at {}", cli.jobs, cli.queue, cli.url);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redis_producer: {e}");
            ExitCode::FAILURE
        }
    }
}
