//! Puts numbered jobs into a Beanstalkd tube, for `beanstalk_worker`.
//!
//! ```text
//! beanstalk_producer --addr 127.0.0.1:11300 --tube jobs --jobs 1000
//! beanstalk_producer --addr 127.0.0.1:11300 --tube jobs --jobs 3 --first-id 1000 --kind poison
//! ```
//!
//! Payload ids run from `--first-id` to `--first-id + --jobs - 1`; each
//! payload is `<id> <kind> <filler>` (see `common/queue_job.rs`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rookery_queues::beanstalk::Client;

#[path = "common/queue_job.rs"]
mod queue_job;

/// Put numbered jobs into a Beanstalkd tube.
#[derive(Debug, Parser)]
struct Cli {
    /// The server, host:port.
    #[arg(long, default_value = "127.0.0.1:11300")]
    addr: String,
    /// The tube to put the jobs into.
    #[arg(long, default_value = "jobs")]
    tube: String,
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
    /// Time to run: a job reserved longer than this goes back to the queue
    /// (the safety net for workers that vanish).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ttr: Duration,
    /// Priority (lower is more urgent).
    #[arg(long, default_value_t = 1024)]
    pri: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> Result<(), rookery_queues::beanstalk::Error> {
        let mut client = Client::connect(&cli.addr)?;
        client.use_tube(&cli.tube)?;
        for id in cli.first_id..cli.first_id + cli.jobs {
            let body = queue_job::payload(id, cli.kind, cli.size);
            client.put(&body, cli.pri, Duration::ZERO, cli.ttr)?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => {
            println!("put {} jobs into tube {:?} on {}", cli.jobs, cli.tube, cli.addr);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("beanstalk_producer: {e}");
            ExitCode::FAILURE
        }
    }
}
