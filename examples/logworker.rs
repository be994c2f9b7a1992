//! A worker that says things every way a Rust program can: the fixture of
//! the logging tests (`tests/it/logging.rs`). Not a template; copy
//! `demodaemon.rs` to start a real daemon.
//!
//! | `[app]` key | effect |
//! |---|---|
//! | `say = true` | in `init`: a tracing event with fields inside a span with fields, a `log::warn!`, a `println!`, an `eprintln!`, a raw `write(2)` to descriptor 1 |
//! | `long_lines = N`, `line_bytes = B` | then N lines of B bytes each (`BEGIN slot seq aaaa... END`), through tracing for odd slots and `println!` for even ones |
//! | `panic = true` | the first `run` panics with a two-line message |
//! | `stubborn = true` | the first `run` starts a job and ignores stop requests (and the alarm backstop) until killed |
//!
//! With `LOGWORKER_OWN_SUBSCRIBER=1` in its environment, `main` installs a
//! tracing subscriber of its own before `rookery::run` (what rookery must
//! explain).

use std::process::ExitCode;
use std::time::Duration;

use rookery::{BoxError, Context, Step, Worker};
use serde::Deserialize;
use tracing::{info, info_span, warn};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    say: bool,
    long_lines: u64,
    line_bytes: usize,
    panic: bool,
    stubborn: bool,
}

struct LogWorker {
    said: bool,
}

/// Line `seq` of worker `slot`: `BEGIN 03 000042 cccc...c END`, `bytes` long.
fn long_line(slot: u32, seq: u64, bytes: usize) -> String {
    let head = format!("BEGIN {slot:02} {seq:06} ");
    let pad = bytes.saturating_sub(head.len() + 4);
    let c = (b'a' + ((slot as u64 + seq) % 26) as u8) as char;
    let mut s = String::with_capacity(bytes);
    s.push_str(&head);
    s.extend(std::iter::repeat_n(c, pad));
    s.push_str(" END");
    s
}

impl Worker for LogWorker {
    type Settings = Settings;
    type Args = rookery::NoArgs;

    fn init(ctx: &mut Context<Self>) -> Result<Self, BoxError> {
        if ctx.settings().say {
            let span = info_span!("job", id = 7, queue = "mail");
            let _in = span.enter();
            warn!(attempt = 3, "retrying");
            log::warn!("from the log crate, slot {}", ctx.slot());
            println!("printed to stdout by slot {}", ctx.slot());
            eprintln!("printed to stderr by slot {}", ctx.slot());
            // A library writing to the descriptor itself, without std.
            let _ = nix::unistd::write(std::io::stdout(), b"raw write to fd 1\n");
        }
        Ok(LogWorker { said: false })
    }

    fn run(&mut self, ctx: &mut Context<Self>) -> Result<Step, BoxError> {
        let s = ctx.settings().clone();
        if s.panic {
            panic!("logworker: boom\nsecond line of the panic message");
        }
        if s.stubborn {
            // A job nothing interrupts: a stop request (and the SIGALRM
            // backstop that follows it) is ignored until SIGKILL.
            let _ = signal_hook::flag::register(
                signal_hook::consts::SIGALRM,
                std::sync::Arc::new(Default::default()),
            );
            ctx.begin_job();
            info!("stubborn job started");
            loop {
                std::thread::sleep(Duration::from_millis(100));
                ctx.heartbeat();
            }
        }
        if !self.said && s.long_lines > 0 {
            self.said = true;
            let slot = ctx.slot();
            for seq in 0..s.long_lines {
                let line = long_line(slot, seq, s.line_bytes);
                if slot % 2 == 1 {
                    info!("{line}");
                } else {
                    println!("{line}");
                }
            }
            info!("long lines done");
        }
        ctx.sleep(Duration::from_secs(1));
        Ok(Step::Idle)
    }
}

fn main() -> ExitCode {
    if std::env::var_os("LOGWORKER_OWN_SUBSCRIBER").is_some() {
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::fmt().with_writer(std::io::stderr).finish(),
        );
    }
    rookery::Daemon::<LogWorker>::new("logworker")
        .about("rookery's logging test fixture")
        .run()
}
