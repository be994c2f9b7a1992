//! The RabbitMQ topology that `rabbitmq_producer`, `rabbitmq_worker` and
//! the tests declare, so there is one definition of it.
//!
//! - `<queue>`: a durable classic queue (the jobs), whose rejected
//!   messages go to the dead-letter exchange (`x-dead-letter-exchange`);
//! - `<queue>.dlx`: a durable fanout exchange, the dead-letter exchange;
//! - `<queue>.dead`: a durable queue bound to it, where poison jobs wait
//!   for an operator.
//!
//! Declaring is idempotent as long as every declarer passes the same
//! arguments (the broker closes the channel with `PRECONDITION_FAILED`
//! otherwise), which is why they all call [`declare`].

#![allow(dead_code)] // each includer uses a different part

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// The dead-letter exchange of `queue`.
pub fn dead_letter_exchange(queue: &str) -> String {
    format!("{queue}.dlx")
}

/// The queue where the dead letters of `queue` end up.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the job queue, its dead-letter exchange and the dead-letter
/// queue, and binds them. Returns how many messages are ready in the job
/// queue.
pub async fn declare(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let dlx = dead_letter_exchange(queue);
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let dead = dead_letter_queue(queue);
    channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    let q = channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await?;
    Ok(q.message_count())
}

/// How many messages are ready in `queue` (a passive declare: an error if
/// the queue does not exist). Messages delivered but not yet acknowledged
/// are not counted.
pub async fn ready(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let q = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(q.message_count())
}
