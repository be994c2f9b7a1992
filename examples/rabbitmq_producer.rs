//! Publishes numbered jobs to a RabbitMQ queue, for `rabbitmq_worker`.
//!
//! ```text
//! rabbitmq_producer --url amqp://127.0.0.1:5672/%2f --queue jobs --jobs 1000
//! ```
//!
//! Declares the queue with its dead-letter exchange (see
//! `common/amqp_topology.rs`), then publishes persistent messages to it
//! through the default exchange, with publisher confirms: it exits 0 only
//! once the broker has confirmed every message. Payload ids run from
//! `--first-id` to `--first-id + --jobs - 1`; each payload is
//! `<id> <kind> <filler>` (see `common/queue_job.rs`) and the message's
//! `message_id` property is the payload id, which the worker records as
//! the job id.

use std::process::ExitCode;

use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

#[path = "common/amqp_topology.rs"]
mod amqp_topology;
#[path = "common/queue_job.rs"]
mod queue_job;

/// Publish numbered jobs to a RabbitMQ queue.
#[derive(Debug, Parser)]
struct Cli {
    /// The broker (AMQP URI; `%2f` is the default virtual host `/`).
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    url: String,
    /// The queue to publish to (declared with its dead-letter exchange).
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

/// How many messages may wait for their confirm at once.
const WINDOW: usize = 1000;

async fn publish(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let connection = Connection::connect(&cli.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    amqp_topology::declare(&channel, &cli.queue).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let ids: Vec<u64> = (cli.first_id..cli.first_id + cli.jobs).collect();
    for batch in ids.chunks(WINDOW) {
        let mut confirms = Vec::with_capacity(batch.len());
        for id in batch {
            let properties = BasicProperties::default()
                .with_delivery_mode(2) // persistent
                .with_message_id(id.to_string().into());
            let confirm = channel
                .basic_publish(
                    "".into(),
                    cli.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &queue_job::payload(*id, cli.kind, cli.size),
                    properties,
                )
                .await?;
            confirms.push((*id, confirm));
        }
        for (id, confirm) in confirms {
            if let Confirmation::Nack(_) = confirm.await? {
                return Err(format!("the broker refused job {id} (basic.nack)").into());
            }
        }
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(publish(&cli)) {
        Ok(()) => {
            println!("published {} jobs to {:?} at {}", cli.jobs, cli.queue, cli.url);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rabbitmq_producer: {e}");
            ExitCode::FAILURE
        }
    }
}
